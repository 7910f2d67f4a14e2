"""edge-gr fleet simulation (built on edge_gr and server)."""
