"""The guestinfo stores read by the guest and the appliance alike."""
