"""Upgrade plans: the kubeadm steps from one version to another and what each needs mirrored.

kubeadm upgrades one minor at a time (v1.34 -> v1.35 -> v1.36, never skipping one), each to
any patch of the next minor; the plan takes the newest mirrored patch of every minor between
the ends. Per step: the kubeadm/kubelet/kubectl rpms (from the published primary) and kubeadm's
image list for the target version, each checked against what is mirrored (image state in
data_dir/state/images/; the registry itself is not asked, so this works with it down).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mirror import state
from mirror.config import Config
from mirror.errors import ConfigError, UnknownKubernetesVersion
from mirror.images.refs import BadReference, parse_reference
from mirror.kubernetes.images import image_list
from mirror.kubernetes.packages import KUBE_PACKAGES, mirrored_packages, newest_patch, packages_of
from mirror.kubernetes.resolve import upgrade_chain
from mirror.kubernetes.versions import KubeVersion, VersionRange, parse_entries


@dataclass(frozen=True)
class RpmNeed:
    name: str
    version: str  # "1.35.9"
    mirrored: tuple[str, ...]  # NVRAs published for it, every arch; () = missing

    @property
    def ok(self) -> bool:
        return bool(self.mirrored)


@dataclass(frozen=True)
class ImageNeed:
    image: str  # upstream reference as kubeadm lists it
    mirrored: bool  # synced successfully at least once (state), so in the registry


@dataclass
class UpgradeStep:
    from_version: str
    to_version: str
    rpms: list[RpmNeed] = field(default_factory=list)
    images: list[ImageNeed] = field(default_factory=list)
    images_source: str | None = None  # "table" / "kubeadm <nvra>"; None: no list at all
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class UpgradePlan:
    start: str
    end: str
    steps: list[UpgradeStep] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # plan-wide, e.g. a minor with no patch

    @property
    def ok(self) -> bool:
        return not self.problems and all(s.ok for s in self.steps)

    def missing(self) -> list[str]:
        return [*self.problems, *(p for s in self.steps for p in s.problems)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for `upgrade-plan --json` and the status page."""
        doc = asdict(self)
        doc["ok"] = self.ok
        for step, raw in zip(self.steps, doc["steps"], strict=True):
            raw["ok"] = step.ok
        return doc


def _mirrored_images(cfg: Config) -> set[str]:
    return {
        r.key
        for r in state.load_all(cfg.state_root, "images")
        if r.last_success is not None and r.digest
    }


def _canonical(image: str) -> str:
    try:
        return parse_reference(image).upstream
    except BadReference:
        return image


def _step(
    cfg: Config, old: KubeVersion, new: KubeVersion, have: set[str], run: bool
) -> UpgradeStep:
    step = UpgradeStep(str(old), str(new))
    version = f"{new.major}.{new.minor}.{new.patch}"
    published = list(packages_of(mirrored_packages(cfg, new.minor_name), new))
    for name in KUBE_PACKAGES:
        nvras = tuple(sorted(p.nvra for p in published if p.name == name))
        step.rpms.append(RpmNeed(name, version, nvras))
        if not nvras:
            step.problems.append(f"rpm {name}-{version} is not mirrored")
    try:
        found = image_list(cfg, str(new), run_kubeadm=run)
    except UnknownKubernetesVersion as exc:
        step.problems.append(f"images of {new}: {exc}")
        return step
    step.images_source = found.source
    for image in found.images:
        mirrored = _canonical(image) in have
        step.images.append(ImageNeed(image, mirrored))
        if not mirrored:
            step.problems.append(f"image {image} is not mirrored")
    return step


def upgrade_plan(cfg: Config, start: str, end: str, run_kubeadm: bool = True) -> UpgradePlan:
    """The plan from `start` to `end`; ConfigError if they are not an upgrade."""
    first, last = KubeVersion.parse(start), KubeVersion.parse(end)
    if first.major != last.major:
        raise ConfigError(f"--from {first} --to {last}", "kubeadm cannot change major versions")
    if last < first:
        raise ConfigError(f"--from {first} --to {last}", "--to is older than --from (downgrade)")
    chain, missing = upgrade_chain(first, last, lambda minor: newest_patch(cfg, minor))
    plan = UpgradePlan(str(first), str(last))
    plan.problems += [
        f"no kubeadm of {minor} is mirrored: kubeadm cannot skip a minor, so that step has "
        "no version to upgrade to"
        for minor in missing
    ]
    have = _mirrored_images(cfg)
    for old, new in zip(chain, chain[1:], strict=False):
        plan.steps.append(_step(cfg, old, new, have, run_kubeadm))
    return plan


def configured_plans(cfg: Config) -> list[dict[str, Any]]:
    """One plan per range in `kubernetes_versions`, as data, for the status page. Never runs
    kubeadm (web workers): image lists are the ones kubeadm gave at sync time, or the table."""
    plans = []
    for entry in parse_entries(cfg.kubernetes_versions):
        if isinstance(entry, VersionRange):
            plan = upgrade_plan(cfg, str(entry.start), str(entry.end), run_kubeadm=False)
            plans.append({"range": str(entry), **plan.to_dict()})
    return plans
