"""A kubelet stand-in that runs pods as local processes on loopback addresses."""
