"""Portable export/import for fully disconnected sites (`mirror export`, `mirror import`).

The archive is a standard tar stream (optionally zstd; optionally split into DEST.000,
DEST.001, ... which are one stream cut in pieces). `manifest.json` is its first member
(mirror.transfer.manifest): format, mirror version, creation time, the config text it was
made from with its sha256, the exporting registry.url and base_url, the base of a delta,
and every member of the state with path, size, sha256 and whether this archive carries it.
Members live under fixed top directories:

    definitions/<file>.repo           the .repo files the exported repos came from
    repos/<key>/repodata/...          repomd.xml (+ .asc) and the metadata it names, as published
    repos/<key>/<href>                the packages the live primary lists
    keys/<repo_id>[/<value>].gpg      repo keys (per target where the gpgkey URL varies)
    oci/                              one OCI image layout: every mirrored image, all platforms,
                                      original digests, shared blobs stored once
    files/<path>, charts/<repo>/...   mirrored files; chart tarballs and index.yaml
    state/{images,files,charts}/*.json the exporting side's records (status shows them)
    state/kubeadm/<version>.json      kubeadm's own image lists, cached at sync time

A delta (`--since BASE`) lists the same members as a full export would and leaves out the
content (packages, image configs and layers, files, chart tarballs) the base has with the
same sha256; import takes those from what the base import published (image blobs are fetched
back from the registry). See mirror.transfer.importer for the verify-then-publish order.
"""
