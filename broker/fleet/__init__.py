"""Many hosted servers behind one endpoint: the servers file, its import, the fleet."""
