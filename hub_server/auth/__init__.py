"""Who may call the hub: credentials (tokens, client certificates), the role
table, and per-caller limits."""
