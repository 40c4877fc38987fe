"""Byte format of one upload: a state dict (or any dict of tensors) as bit-packed codes.

Layout: MAGIC | version (u8) | header length (u32 LE) | header JSON | payload | crc32 (u32 LE).
The header lists bits, whether the payload is a delta against a reference, and
[name, shape, dtype] per tensor. Per tensor the payload holds, in header order:
  float tensor, bits 2..16: C float32 scales, then numel codes of exactly `bits` bits
      each (offset to unsigned q + q_max), little-endian bit order, padded to a byte;
  float tensor, bits 32:    numel raw float32 values (the "float32 codec");
  any other dtype:          its raw bytes, unchanged (e.g. num_batches_tracked).
The crc32 covers everything before it, so truncated or corrupted blobs raise CodecError.
len(encode(sd, bits)) == header_size(blob) + packed_size(sd, bits), exactly.
"""
import json
import math
import struct
import zlib

import numpy as np
import torch

from .errors import CodecError
from .quant import QTensor, check_bits, code_dtype, dequantize, num_channels, q_max, quantize

MAGIC = b"FLQC"
VERSION = 1
_PREFIX = struct.Struct("<4sBI")  # magic, version, header length
_CRC = struct.Struct("<I")


def _dtype(name):
    """torch dtype from its header name, e.g. 'float32' -> torch.float32."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise CodecError(f"unknown dtype {name!r} in header")
    return dtype


def _np_dtype(dtype):
    """numpy dtype with the same bytes as torch `dtype` (for raw pass-through)."""
    return torch.empty(0, dtype=dtype).numpy().dtype


def tensor_size(shape, dtype, bits):
    """Payload bytes of one tensor: 4 B per scale + ceil(numel * bits / 8), or raw bytes."""
    numel = math.prod(shape)
    if not dtype.is_floating_point:
        return numel * _np_dtype(dtype).itemsize
    if bits == 32:
        return 4 * numel
    return 4 * num_channels(shape) + math.ceil(numel * bits / 8)


def packed_size(state_dict, bits):
    """Payload bytes of encode(state_dict, bits), header and checksum excluded."""
    check_bits(bits)
    return sum(tensor_size(tuple(t.shape), t.dtype, bits) for t in state_dict.values())


def header_size(blob):
    """Bytes of `blob` that are not payload: prefix, header JSON and checksum."""
    _, _, length = _PREFIX.unpack_from(blob)
    return _PREFIX.size + length + _CRC.size


def message_length(blob):
    """Bytes of the first message in `blob`, when several are sent back to back (SCAFFOLD's update, then its
    Delta c): from the prefix and the header's tensors; `decode` then checks each message's checksum."""
    blob = memoryview(bytes(blob))
    if len(blob) < _PREFIX.size:
        raise CodecError(f"upload is truncated: {len(blob)} bytes is shorter than any valid upload")
    _, _, length = _PREFIX.unpack_from(blob)
    end = _PREFIX.size + length
    try:
        header = json.loads(bytes(blob[_PREFIX.size:end]))
        check_bits(header["bits"])
        payload = sum(tensor_size(tuple(shape), _dtype(d), header["bits"]) for _, shape, d in header["tensors"])
    except (ValueError, KeyError, TypeError) as e:
        raise CodecError(f"upload header is malformed: {e!r}") from None
    return end + payload + _CRC.size


def _code_word(bits):
    """Unsigned numpy word one offset code is staged in: uint8 up to 8 bits, else uint16."""
    return np.dtype(np.uint8 if bits <= 8 else "<u2")


def pack_codes(q, bits):
    """Pack signed codes (numpy int array) into exactly `bits` bits each, as bytes."""
    u = (q.astype(np.int32).ravel() + q_max(bits)).astype(_code_word(bits))  # 0 .. 2^bits - 2
    if bits in (8, 16):
        return u.tobytes()
    # One row of 8 or 16 bit columns per code; keep the low `bits` columns, pack them.
    # (Rows are whole bytes, so flat unpackbits/packbits suffice; axis=1 is much slower.)
    columns = np.unpackbits(u.view(np.uint8), bitorder="little").reshape(len(u), 8 * u.itemsize)
    return np.packbits(columns[:, :bits], bitorder="little").tobytes()


def unpack_codes(data, numel, bits):
    """Inverse of pack_codes: `numel` signed int32 codes from the packed bytes."""
    word = _code_word(bits)
    if bits in (8, 16):
        u = np.frombuffer(data, word, count=numel)
    else:
        columns = np.zeros((numel, 8 * word.itemsize), np.uint8)
        flat = np.unpackbits(np.frombuffer(data, np.uint8), count=numel * bits, bitorder="little")
        columns[:, :bits] = flat.reshape(numel, bits)
        u = np.packbits(columns.ravel(), bitorder="little").view(word)
    return u.astype(np.int32) - q_max(bits)


def _check_reference(name, tensor, reference):
    """The reference tensor for `name`, as float32 on the tensor's device."""
    if name not in reference:
        raise CodecError(f"{name}: missing from the reference state dict")
    ref = reference[name]
    if tuple(ref.shape) != tuple(tensor.shape):
        raise CodecError(f"{name}: shape {tuple(tensor.shape)} differs from the reference's {tuple(ref.shape)}")
    return ref.detach().to(tensor.device, torch.float32)


def encode(state_dict, bits=32, rounding="nearest", reference=None, generator=None):
    """Encode a dict of tensors as bytes; with `reference`, float tensors are sent as w - reference."""
    check_bits(bits)
    entries, chunks = [], []
    for name, tensor in state_dict.items():
        tensor = tensor.detach()
        entries.append([name, list(tensor.shape), str(tensor.dtype).removeprefix("torch.")])
        if not tensor.is_floating_point():
            chunks.append(tensor.cpu().contiguous().numpy().tobytes())
            continue
        w = tensor.float()
        if reference is not None:
            w = w - _check_reference(name, tensor, reference)
        if bits == 32:
            # Rejected here too, so every width treats a diverged client the same way.
            if not bool(torch.isfinite(w).all()):
                raise CodecError(f"{name}: tensor has non-finite values (nan or inf); cannot encode")
            chunks.append(w.cpu().numpy().astype("<f4", copy=False).tobytes())
            continue
        qt = quantize(w, bits, rounding, generator, name)
        chunks.append(qt.scale.cpu().numpy().astype("<f4", copy=False).tobytes())
        chunks.append(pack_codes(qt.q.cpu().numpy(), bits))
    header = json.dumps({"bits": bits, "delta": reference is not None, "tensors": entries},
                        separators=(",", ":")).encode()
    body = b"".join([_PREFIX.pack(MAGIC, VERSION, len(header)), header, *chunks])
    return body + _CRC.pack(zlib.crc32(body))


def _parse(blob):
    """Check prefix and checksum; return (header dict, payload memoryview)."""
    blob = memoryview(bytes(blob))
    if len(blob) < _PREFIX.size + _CRC.size:
        raise CodecError(f"upload is truncated: {len(blob)} bytes is shorter than any valid upload")
    magic, version, length = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise CodecError(f"not an fl_lib upload: magic bytes {bytes(magic)!r}, expected {MAGIC!r}")
    (crc,) = _CRC.unpack_from(blob, len(blob) - _CRC.size)
    if zlib.crc32(blob[:-_CRC.size]) != crc:
        raise CodecError(f"upload is truncated or corrupted: checksum mismatch ({len(blob)} bytes)")
    if version != VERSION:
        raise CodecError(f"upload has format version {version}; this fl_lib reads version {VERSION}")
    end = _PREFIX.size + length
    if end > len(blob) - _CRC.size:
        raise CodecError(f"upload is truncated: header of {length} bytes runs past the end")
    try:
        header = json.loads(bytes(blob[_PREFIX.size:end]))
        check_bits(header["bits"])
        if not isinstance(header["delta"], bool) or not isinstance(header["tensors"], list):
            raise TypeError("'delta' must be a bool and 'tensors' a list")
    except (ValueError, KeyError, TypeError) as e:
        raise CodecError(f"upload header is malformed: {e!r}") from None
    return header, blob[end:len(blob) - _CRC.size]


def _entries(header, payload):
    """Yield (name, shape, dtype, bytes) per tensor, after checking the payload length."""
    bits, tensors = header["bits"], header["tensors"]
    try:
        sizes = [tensor_size(tuple(shape), _dtype(d), bits) for _, shape, d in tensors]
    except (ValueError, TypeError) as e:
        raise CodecError(f"upload header is malformed: {e!r}") from None
    if sum(sizes) != len(payload):
        raise CodecError(f"upload payload is {len(payload)} bytes, header implies {sum(sizes)}")
    at = 0
    for (name, shape, dtype_name), size in zip(tensors, sizes):
        yield name, tuple(shape), _dtype(dtype_name), payload[at:at + size]
        at += size


def _qtensor(data, shape, dtype, bits):
    """QTensor from one float tensor's payload bytes: C float32 scales, then packed codes."""
    c = num_channels(shape)
    scale = torch.from_numpy(np.frombuffer(data[:4 * c], "<f4").astype(np.float32))
    q = unpack_codes(data[4 * c:], math.prod(shape), bits).reshape(shape)
    return QTensor(q=torch.from_numpy(q).to(code_dtype(bits)), scale=scale, bits=bits, dtype=dtype)


def decode(blob, reference=None):
    """Decode bytes from `encode` into a dict of CPU tensors with their original dtypes."""
    header, payload = _parse(blob)
    bits, delta = header["bits"], header["delta"]
    if delta and reference is None:
        raise CodecError("upload is a delta against a reference: pass reference= to decode")
    if not delta and reference is not None:
        raise CodecError("upload is not a delta: decode it without a reference")
    out = {}
    for name, shape, dtype, data in _entries(header, payload):
        if not dtype.is_floating_point:
            out[name] = torch.from_numpy(np.frombuffer(data, _np_dtype(dtype)).reshape(shape).copy())
            continue
        if bits == 32:
            w = torch.from_numpy(np.frombuffer(data, "<f4").astype(np.float32).reshape(shape))
        else:
            w = dequantize(_qtensor(data, shape, dtype, bits))
        if delta:
            w = w + _check_reference(name, w, reference)
        out[name] = w.to(dtype)
    return out


def decode_codes(blob):
    """The integer codes and scales of a quantized upload, {name: QTensor}, float tensors only."""
    header, payload = _parse(blob)
    bits = header["bits"]
    if bits == 32:
        raise CodecError("upload is float32 (bits=32): it holds no integer codes")
    return {name: _qtensor(data, shape, dtype, bits)
            for name, shape, dtype, data in _entries(header, payload) if dtype.is_floating_point}
