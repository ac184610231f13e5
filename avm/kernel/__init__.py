"""The kernel: agent records, the effect table, the one trap and its hooks (private to AVM).

- `record`: the agent record (`Agent`), what the kernel knows of one agent;
- `outcome`: what performing an effect came to (`Outcome`);
- `effects`: one handler per effect kind, a table built from `opcodes.EFFECT_KINDS`;
- `trap`: each agent's task loop and `apply`, the one place an outcome becomes the agent's state (and
  `replayed`, the outcome a recovering agent is fed from its journal);
- `hooks`: what a hook at the trap is told (`Hook`: started, effect, mailed, refunded, hibernated,
  restarted, ended); the journal (`avm.journal.writer.Journal`) is the first;
- `shared`: programs, prompt templates and tool grants, kept once as refs;
- `kernel`: the agents of one VM, their tasks, what happens between them, and `resume`;
- `settings`: the VM's settings and statistics records.

`avm.runtime.VM` and `avm.runtime.AgentHandle` are the public facades; nothing
outside this package touches a record or the kernel's state.
"""
