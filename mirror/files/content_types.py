"""Content-Type by suffix for /files/ and /charts/, one table for nginx and the app.

Only types a manifest, chart or tool tarball has. Archives keep their own type and are never
given a Content-Encoding, so no client gunzips a .tgz on the way (its digest is over the
compressed bytes). Nothing is served as HTML, SVG or JavaScript: these files come from
upstreams, and a page under the mirror's origin must not run their script.
"""

from __future__ import annotations

MIMETYPES: dict[str, str] = {
    "yaml": "application/yaml",
    "yml": "application/yaml",
    "json": "application/json",
    "txt": "text/plain",
    "md": "text/plain",
    "sha256": "text/plain",
    "sha256sum": "text/plain",
    "asc": "application/pgp-signature",
    "sig": "application/pgp-signature",
    "tgz": "application/gzip",
    "gz": "application/gzip",
    "tar": "application/x-tar",
    "xz": "application/x-xz",
    "zst": "application/zstd",
    "bz2": "application/x-bzip2",
    "zip": "application/zip",
    "sh": "text/x-shellscript",
}
DEFAULT = "application/octet-stream"


def content_type(name: str) -> str:
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return MIMETYPES.get(suffix, DEFAULT)
