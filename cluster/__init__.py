"""The cluster: rooms shared by several servers over Redis, above the protocol."""
