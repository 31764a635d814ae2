"""A call's life: sessions, admission, routing, validation, deadlines, answers."""
