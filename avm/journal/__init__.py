"""The journal: every effect an agent performs, appended to its hash-chained log in the store.

- `entry`: one entry and its canonical encoding (its hash is its ref);
- `writer`: the `Journal` hook that appends entries at the trap, and snapshots;
- `reader`: reading a journal back and checking its chain.
"""

from avm.journal.entry import Entry, JournalError
from avm.journal.reader import check_journal, check_journals, journals, read_journal
from avm.journal.writer import Journal, journal_name

__all__ = ["Entry", "Journal", "JournalError", "check_journal", "check_journals", "journal_name", "journals",
           "read_journal"]
