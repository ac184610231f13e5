"""The dictionary trainer (`avm.memory.dictionary`): what it keeps between trainings, and what it trains."""

from __future__ import annotations

import json
import random

import zstandard

from avm.memory.dictionary import DictionaryTrainer
from avm.memory.settings import resolve_settings

CAP = 256 << 10


def _messages(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [json.dumps({"role": "tool", "tool_call_id": f"call_{rng.getrandbits(64):016x}",
                        "content": " ".join(rng.choice(["found", "line", "match", "src/app.py", "def", "return",
                                                        "error", "ok", str(rng.randrange(999))])
                                            for _ in range(rng.randrange(40, 120)))}).encode()
            for _ in range(n)]


def _trainer(**overrides):
    settings = resolve_settings({"dict_train_samples": 500, "dict_train_min_bytes": 64 << 10,
                                 "dict_sample_buffer_bytes": CAP, "dict_size_bytes": 16 << 10, **overrides})
    return DictionaryTrainer(settings)


def test_the_samples_kept_for_the_next_training_stay_under_the_cap_and_take_a_fraction_of_it():
    trainer = _trainer(dict_retrain_samples=10**9)
    messages = _messages(4000)
    for m in messages:
        trainer.offer(m)
    assert trainer._sample_bytes <= CAP < sum(map(len, messages))  # the reservoir counts the samples' own size
    assert sum(map(len, trainer._samples)) * 2 < trainer._sample_bytes  # and keeps them compressed


def test_a_trained_dictionary_comes_from_the_samples_themselves_and_packs_alike_messages_smaller():
    trainer = _trainer()
    ready = [trainer.offer(m) for m in _messages(600)]
    assert ready[-1] and not ready[0]
    zdict = zstandard.ZstdCompressionDict(trainer.train())
    fresh = _messages(200, seed=2)
    with_dict = zstandard.ZstdCompressor(level=1, dict_data=zdict).compress
    alone = zstandard.ZstdCompressor(level=1).compress
    assert sum(len(with_dict(m)) for m in fresh) * 1.5 < sum(len(alone(m)) for m in fresh)
    assert trainer._samples == [] and trainer.trainings == 1


def test_a_trainer_that_never_retrains_keeps_nothing_after_its_training():
    trainer = _trainer(dict_retrain_samples=0)
    for m in _messages(600):
        trainer.offer(m)
    assert trainer.train() is not None
    assert not any(trainer.offer(m) for m in _messages(600, seed=3))
    assert trainer._samples == []
