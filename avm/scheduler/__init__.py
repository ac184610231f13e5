"""Run queue, priorities, mailboxes, supervision, hibernation."""
