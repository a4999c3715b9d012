"""The sweep and its workdir: runs planned and trained inline, fingerprints, layout, locks,
outputs."""
