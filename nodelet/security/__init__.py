"""Least privilege for containers: capabilities, seccomp, sysctls and LSM checks (agent side)."""
