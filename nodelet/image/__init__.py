"""Container images: references, a content-addressed store under the root dir, safe layer
unpacking, docker-archive / OCI layout import and pulls from an OCI distribution registry."""
