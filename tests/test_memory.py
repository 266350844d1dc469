"""The memory floor refuses only what cannot fit: its parts are exact, and it lets through what does."""

import pytest

from tinythinker_jax import memory
from tinythinker_jax.errors import UserError
from tinythinker_jax.models import t5
from tinythinker_jax.training import trainer


def test_the_floor_is_the_parameters_gradients_and_one_position_of_logits_per_row():
    config = t5.model_config("t5_1_0_tiny")
    params = memory.parameter_count(config)
    assert params == 2_221_056
    assert memory.floor_bytes(config, 64, trains=True) == 8 * params + 64 * 32_128 * 4
    assert memory.floor_bytes(config.replace(dtype="bfloat16"), 64, trains=False) == 4 * params + 64 * 32_128 * 2


def test_a_16_gib_chip_refuses_t5_3b_training_and_lets_t5_small_through(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: (16 * memory.GIB, "1 tpu device with 16.0 GiB together"))
    with pytest.raises(UserError, match=r"trainer.train.batch_size is 1: one step needs at least 21.2 GiB "
                                        r"\(parameters and gradients and one position's logits per row\), more "
                                        r"than the 1 tpu device with 16.0 GiB together; lower it"):
        memory.require_fits(trainer.train, "batch_size", 1, 1, t5.model_config("t5_1_0_3b"), trains=True)
    memory.require_fits(trainer.train, "batch_size", 1, 4096, t5.model_config("t5_1_0_small"), trains=True)


def test_this_machine_has_some_memory():
    total, described = memory.available_bytes()
    assert total > memory.GIB and "GiB" in described
