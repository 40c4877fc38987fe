"""Table 1: upload bytes per round, against the paper's 28.41 / 14.66 MiB and the formula."""
import json

import pytest
import torch

from fl_lib.core import codec
from fl_lib.core.errors import ConfigError
from fl_lib.core.models import build_model
from fl_lib.study.traffic import MIB, format_table, traffic_table

PARAMS, CHANNELS = 740_554, 3012  # SqueezeNet 1.0, 10 classes: weights + biases, and scales


@pytest.fixture(scope="module")
def rows():
    return traffic_table("squeezenet1_0", 10, (32, 16, 8, 4, 2), 10)


def test_fp32_row_reproduces_the_paper(rows):
    fp32 = rows[0]
    assert fp32["bits"] == 32 and fp32["paper_mib"] == 28.41
    # The paper's 28.41 is MiB of torch.save'd float32 state dicts, 10 clients.
    assert fp32["torch_save_mib"] == pytest.approx(28.41, rel=0.005)
    assert fp32["torch_save_reduction_pct"] == 0 and fp32["encoded_reduction_pct"] == 0


def test_int16_row_is_near_the_paper(rows):
    int16 = rows[1]
    assert int16["paper_mib"] == 14.66
    # Our naive layout (int16 codes + float32 scales) is 0.8% below the paper's number.
    assert int16["torch_save_mib"] == pytest.approx(14.66, rel=0.015)
    assert 48 < int16["torch_save_reduction_pct"] < 50  # paper: -48.4%


def test_encoded_sizes_follow_the_formula(rows):
    torch.manual_seed(0)
    state = build_model("squeezenet1_0", 10).state_dict()
    by_bits = {r["bits"]: r for r in rows}
    for b, row in by_bits.items():
        header = codec.header_size(codec.encode(state, b))  # its JSON names the bit width
        assert header < 4096
        if b == 32:
            payload = 4 * PARAMS
        else:  # each tensor's codes are padded to a whole byte; 16 bits: exactly 2 B/param
            payload = sum(-(-t.numel() * b // 8) for t in state.values()) + 4 * CHANNELS
        assert row["encoded_bytes"] == 10 * (payload + header)
        assert row["encoded_mib"] == row["encoded_bytes"] / MIB
    header16 = codec.header_size(codec.encode(state, 16))
    assert by_bits[16]["encoded_bytes"] == 10 * (2 * PARAMS + 4 * CHANNELS + header16)


def test_rows_are_json_and_printable(rows):
    assert json.loads(json.dumps(rows)) == rows
    text = format_table(rows)
    assert "28.41" in text and "14.66" in text and "INT4" in text


def test_other_configs_have_no_paper_column():
    rows = traffic_table("2nn", num_clients=3, bits=(8,))
    assert rows[0]["paper_mib"] is None and "Paper" not in format_table(rows)
    assert rows[0]["encoded_reduction_pct"] > 70  # still measured against FP32
    with pytest.raises(ConfigError):
        traffic_table("2nn", bits=(12, 1))
