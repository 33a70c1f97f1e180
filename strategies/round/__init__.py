"""One round: its context and state, the messages, the server's side of each mode, the record, the loop."""
