"""Typed errors with the context a sysadmin needs; the CLI maps them to exit codes."""

from __future__ import annotations

# Exit codes of `mirror` (documented in README.md for cron alerting).
EXIT_OK = 0
EXIT_SYNC_FAILED = 1  # some repo or image could not be mirrored; the rest was
EXIT_CONFIG = 2  # bad config, .repo file, images.txt or command line; nothing was done
EXIT_LOCKED = 75  # another sync holds the lock (EX_TEMPFAIL: try again later)
EXIT_ENVIRONMENT = 3  # a required program or service is missing (skopeo, registry, gpg)


class MirrorError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = EXIT_SYNC_FAILED


class ConfigError(MirrorError):
    """The configuration (or a file it points at) is invalid.

    `source` names the file (and line or key) so the message is actionable on its own.
    """

    exit_code = EXIT_CONFIG

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source


class UnknownKubernetesVersion(ConfigError):
    """A Kubernetes version outside the table of kubeadm image sets."""


class LockedError(MirrorError):
    exit_code = EXIT_LOCKED


class EnvironmentProblem(MirrorError):
    """A program or service we depend on is missing or unreachable."""

    exit_code = EXIT_ENVIRONMENT


class RepoSyncError(MirrorError):
    """One repository could not be synced; the previously published copy is untouched."""

    def __init__(self, repo: str, message: str, url: str | None = None) -> None:
        where = f" ({url})" if url else ""
        super().__init__(f"repo {repo}: {message}{where}")
        self.repo = repo
        self.url = url


class PackageError(RepoSyncError):
    """A single package failed (download or checksum); fails its repo."""

    def __init__(self, repo: str, package: str, message: str, url: str | None = None) -> None:
        super().__init__(repo, f"package {package}: {message}", url)
        self.package = package


class UnsafePathError(RepoSyncError):
    """Upstream metadata tried to point outside the repository."""


class ImageSyncError(MirrorError):
    """One image could not be mirrored."""

    def __init__(self, image: str, message: str) -> None:
        super().__init__(f"image {image}: {message}")
        self.image = image


class LocalDiskError(MirrorError):
    """This machine cannot write under data_dir (disk full, quota, read-only, I/O error).

    Never retried: every other item on the same file system would fail the same way, so the
    sync stops them too. `reason` is the short cause ("no space left on device")."""

    def __init__(self, label: str, key: str, reason: str, where: str) -> None:
        super().__init__(f"{label} {key}: {reason} under data_dir ({where})")
        self.key = key
        self.reason = reason


class PruneError(MirrorError):
    """`mirror prune` cannot safely decide or do what to remove; nothing more is removed."""


class ArchiveError(MirrorError):
    """An export archive (or one of its parts, or a member) is unusable: truncated, tampered,
    not ours, a delta onto the wrong base. `source` names the file (and member)."""

    exit_code = EXIT_CONFIG

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
