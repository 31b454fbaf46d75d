"""Helm chart repositories as a kind of content (issue 9, part 3), and the images their charts
reference (part 4).

One item per chart repository (`<repo-name>`): its upstream index.yaml is fetched, the wanted
versions selected, each tarball downloaded and verified against the index's sha256 `digest`,
then published under data_dir/charts/<repo-name>/ with an index.yaml naming only them, its
`urls` pointing at this mirror. See mirror.charts.sync for the order that keeps nodes safe.
"""
