import pytest
from datasets import Dataset

from genz_speak.training.sft import check_masking


def test_counts_trained_tokens_and_dropped_rows() -> None:
    ds = Dataset.from_dict({"labels": [[-100, -100, 5, 6], [-100, 7, 8, 9]]})
    assert check_masking(ds, rows_in=3) == {"rows": 3, "completion_tokens": 5, "rows_fully_masked": 1}


def test_all_masked_fails_with_the_remedy() -> None:
    ds = Dataset.from_dict({"labels": [[-100, -100], [-100, -100]]})
    with pytest.raises(ValueError, match=r"max_seq_length"):
        check_masking(ds, rows_in=2)


def test_trl_115_completion_mask_column() -> None:
    ds = Dataset.from_dict({"input_ids": [[1, 2, 3]], "completion_mask": [[0, 1, 1]]})
    assert check_masking(ds, rows_in=1)["completion_tokens"] == 2
