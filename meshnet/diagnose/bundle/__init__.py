"""Support bundles: record what diagnosis reads from a namespace, replay it offline."""
