"""Device sources: the only place that knows about udev, sysfs, USB and mounts."""
