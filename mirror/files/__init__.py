"""Files as content: manifests and tarballs from anywhere, published under data_dir/files/.

- mirror.files.config: the `files:` entries of mirror.yaml (FileEntry)
- mirror.files.sync: one entry synced (conditional HEAD, verified download, atomic publish)
- mirror.files.kind: the kind (mirror.content), FileRecord in mirror.files.record
- mirror.files.discover: images found in them (`discovered_images(cfg)`)
"""
