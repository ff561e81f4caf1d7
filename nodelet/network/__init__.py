"""Pod networking: an IP per pod (built-in bridge + host-local IPAM + nftables, or CNI)."""
