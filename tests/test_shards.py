"""shards.py: the token shard format (header, CRC-checked blocks), the manifest check, the train/val split."""
import numpy as np
import pytest

import shards
from corpus import DataError
from pipeline import ROOT


def test_split_is_deterministic_by_content_and_splits_evenly():
    docs = (ROOT / "data" / "sample" / "mono" / "de.txt").read_text().splitlines()
    mask = shards.val_mask(docs, 0.1)
    assert mask == [shards.is_val(d, 0.1) for d in docs]
    assert 0.09 < np.mean(mask) < 0.11                                  # binomial sigma over 2,380 lines: 0.006
    assert shards.split_key("bilingual", "a\nb") == shards.split_key("bilingual", "b\na")


def test_shard_roundtrip_uint16_and_uint32(tmp_path):
    toks = np.array([0, 5, 65535, 7])
    shards.write_shard(tmp_path / "a.bin", toks, "ab" * 32, vocab_size=65536)
    got = shards.read_shard(tmp_path / "a.bin", "ab" * 32)
    assert got.dtype == np.uint16 and got[:].tolist() == toks.tolist() and len(got) == 4
    big = np.array([0, 255_999, 70_000])
    shards.write_shard(tmp_path / "b.bin", big, "cd" * 32, vocab_size=256_000)
    got = shards.read_shard(tmp_path / "b.bin")
    assert got.dtype == np.uint32 and np.asarray(got).tolist() == big.tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]          # no temporary files left
    shards.write_shard(tmp_path / "e.bin", np.zeros(0, int), "ab" * 32, vocab_size=100)
    assert len(shards.read_shard(tmp_path / "e.bin")) == 0


def test_atomically_written_files_get_the_mode_of_a_plain_file(tmp_path):
    """A temporary file is created 0o600; what is renamed into place must not stay so (shards, manifests and run
    files are read by other users of a shared cluster)."""
    import os
    from common import atomic_write_json
    from workunits import save_npy
    (tmp_path / "plain").write_text("x")
    want = (tmp_path / "plain").stat().st_mode & 0o777
    shards.write_shard(tmp_path / "a.bin", np.arange(10), "ab" * 32, vocab_size=100)
    atomic_write_json(tmp_path / "b.json", {"a": 1})
    save_npy(tmp_path / "c.npy", np.arange(3))
    old = os.umask(0o027)                               # the mode follows the umask of the process, as open() does
    try:
        import common
        assert common._new_file_mode() == 0o640
    finally:
        os.umask(old)
    assert [(tmp_path / n).stat().st_mode & 0o777 for n in ("a.bin", "b.json", "c.npy")] == [want] * 3


def test_reading_with_another_tokenizer_is_an_error(tmp_path):
    shards.write_shard(tmp_path / "a.bin", np.arange(10), "ab" * 32, vocab_size=100)
    with pytest.raises(DataError, match="re-tokenize"):
        shards.read_shard(tmp_path / "a.bin", "ff" * 32)


def test_truncated_or_foreign_shard_is_an_error(tmp_path):
    shards.write_shard(tmp_path / "a.bin", np.arange(10), "ab" * 32, vocab_size=100)
    raw = (tmp_path / "a.bin").read_bytes()
    (tmp_path / "a.bin").write_bytes(raw[:-4])
    with pytest.raises(DataError, match="truncated"):
        shards.read_shard(tmp_path / "a.bin")
    (tmp_path / "c.bin").write_bytes(b"x" * 100)
    with pytest.raises(DataError, match="not a version-2"):
        shards.read_shard(tmp_path / "c.bin")


def test_token_id_beyond_vocab_refused(tmp_path):
    with pytest.raises(DataError, match="vocab_size"):
        shards.write_shard(tmp_path / "a.bin", np.array([1, 300]), "ab" * 32, vocab_size=257)


def test_a_shard_being_written_never_looks_complete(tmp_path):
    w = shards.ShardWriter(tmp_path / "a.bin", "ab" * 32, 100)
    w.write(np.arange(10))
    assert not (tmp_path / "a.bin").exists()
    with pytest.raises(DataError):
        shards.read_shard(w.tmp)                                          # zero header: not a shard
    w.close()
    assert shards.read_shard(tmp_path / "a.bin")[:].tolist() == list(range(10))


def test_a_flipped_byte_is_found_in_the_block_that_holds_it_when_first_read(tmp_path):
    n = 3 * shards.BLOCK // 2 + 123                                     # 2 bytes/token: 3+ blocks
    shards.write_shard(tmp_path / "a.bin", np.arange(n) % 1000, "ab" * 32, vocab_size=1000)
    path = tmp_path / "a.bin"
    raw = bytearray(path.read_bytes())
    raw[shards.HEADER + 2 * shards.BLOCK + 10] ^= 0x40                 # inside block 2
    path.write_bytes(bytes(raw))
    s = shards.read_shard(path)
    assert s[:1000].tolist() == list(range(1000))                      # blocks 0 and 1 are fine
    assert s[shards.BLOCK // 2: shards.BLOCK].size == shards.BLOCK // 2
    with pytest.raises(DataError, match=r"a\.bin: corrupt data in bytes 2,097,216"):
        s[shards.BLOCK: shards.BLOCK + 10]                              # tokens of block 2
    with pytest.raises(DataError, match="CRC"):
        s.verify()
