"""The in-guest tether agent and guestinfo."""
