"""One docked camera's session (``session.Session``), the registry of those docked now
(``registry.Sessions``), and what a session leans on: how a camera was lost
(``camera``), event markers (``markers``), spool backpressure (``backpressure``) and
the signed manifest (``manifest``)."""
