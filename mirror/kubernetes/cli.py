"""`mirror upgrade-plan`: a click command the main group registers (`main.add_command`).

Kept free of heavy imports at module level: mirror.cli imports this on every start.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Protocol

import click

from mirror.errors import EXIT_ENVIRONMENT, EXIT_OK, EXIT_SYNC_FAILED, MirrorError

if TYPE_CHECKING:
    from mirror.config import Config
    from mirror.kubernetes.upgrade import UpgradePlan, UpgradeStep


class _HasConfig(Protocol):
    """What mirror.cli puts in ctx.obj: the config, loaded on first use."""

    @property
    def cfg(self) -> Config: ...


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISSING"


def step_lines(number: int, step: UpgradeStep) -> list[str]:
    lines = [f"step {number}: {step.from_version} -> {step.to_version}"]
    minor = step.to_version.rsplit(".", 1)[0]
    lines.append(
        f"  nodes: echo {minor} > /etc/dnf/vars/kubernetes_minor; dnf install -y "
        f"--disableexcludes=kubernetes kubeadm-{step.to_version[1:]}; kubeadm upgrade apply "
        f"{step.to_version} (first control plane) / kubeadm upgrade node (the others); "
        f"then kubelet-{step.to_version[1:]} kubectl-{step.to_version[1:]}"
    )
    for rpm in step.rpms:
        found = ", ".join(rpm.mirrored) or f"{rpm.name}-{rpm.version}"
        lines.append(f"  rpm    {_mark(rpm.ok):8} {found}")
    if step.images_source is not None:
        lines.append(f"  images from {step.images_source}:")
    for image in step.images:
        lines.append(f"  image  {_mark(image.mirrored):8} {image.image}")
    lines += [f"  problem: {p}" for p in step.problems if not p.startswith(("rpm ", "image "))]
    return lines


def plan_lines(plan: UpgradePlan) -> list[str]:
    count = len(plan.steps)
    lines = [f"upgrade {plan.start} -> {plan.end}: {count} step{'s' if count != 1 else ''}"]
    if not plan.steps and not plan.problems:
        lines.append("  nothing to do: --from and --to are the same version")
    for number, step in enumerate(plan.steps, start=1):
        lines += step_lines(number, step)
    lines += [f"problem: {p}" for p in plan.problems]
    missing = plan.missing()
    if missing:
        lines.append(f"upgrade-plan: {len(missing)} missing; run `mirror sync` (or add them)")
    else:
        lines.append("upgrade-plan: everything every step needs is mirrored")
    return lines


@click.command("upgrade-plan")
@click.option("--from", "start", required=True, metavar="V", help="Version the cluster runs.")
@click.option("--to", "end", required=True, metavar="V", help="Version to upgrade to.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def upgrade_plan(obj: _HasConfig, start: str, end: str, as_json: bool) -> None:
    """kubeadm upgrade steps from V to V (one minor at a time) and whether each step's rpms
    and images are mirrored. Exit 1 when something is missing."""
    from mirror.kubernetes.upgrade import upgrade_plan as make_plan

    try:
        plan = make_plan(obj.cfg, start, end)
    except MirrorError as exc:
        click.echo(f"mirror: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:  # e.g. an unreadable data_dir: one line, as every mirror command
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"mirror: error: {where}{exc.strerror or exc}", err=True)
        sys.exit(EXIT_ENVIRONMENT)
    if as_json:
        click.echo(json.dumps(plan.to_dict(), indent=2))
    else:
        for line in plan_lines(plan):
            click.echo(line)
    sys.exit(EXIT_OK if plan.ok else EXIT_SYNC_FAILED)
