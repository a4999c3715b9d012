"""The process: devices and the data-parallel mesh, multi-host start-up, XLA options and cache,
signals, atomic file writes."""
