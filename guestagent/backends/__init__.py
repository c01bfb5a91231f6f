"""Guest-side guestinfo backends: vmware-rpctool, the file-backed store, the vCenter simulator."""
