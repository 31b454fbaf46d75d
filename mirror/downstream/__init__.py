"""Mirrors of mirrors: a node (B) whose content comes from another mirror node (A).

A serves one document for its downstreams, `GET /downstream.json` (mirror.downstream.index):
its generated .repo definitions, the sha256 of every published repomd.xml, every mirrored
image (upstream name, A's names, digest), every mirrored file (path, sha256, size) and chart
repository. It carries a strong ETag; B asks with If-None-Match.

B (`upstream_mirror: A's base_url`, mirror.downstream.client) fetches it as the first kind
of every sync (mirror.downstream.kind) and keeps it under data_dir/state/downstream/:
- repos: A's .repo definitions are loaded next to repos_dir's (mirror.repofile), so they are
  synced by the ordinary yum sync from A's /repos/ (metadata byte for byte, repomd.xml.asc
  verified against A's /keys/), and B's own .repo files point at B;
- images: A's images are planned like images.txt lines, their repositories redirected to
  A's registry by a generated containers-registries.conf; copies keep digests;
- files: `files:` entries for A's /files/ pinned to A's sha256;
- charts: `charts:` entries for A's /charts/<repo>/ with the versions A holds.
When the index was fetched in this very run, what it says is unchanged (B's repo published
from a repomd.xml with that sha256, B's image recorded with that digest, B's file with that
sha256, B's chart repo from an index.yaml with that sha256) is not asked for again: a no-op
resync is one conditional request (a 304) at A.
"""
