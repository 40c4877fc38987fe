"""Secure aggregation over Flower messages: fl_lib's own protocol (privacy/secagg.py), one message per step.

  step (message type)             server sends                        client answers
  1 AdvertiseKeys (query.        seed, round, its position u,        two X25519 public keys: s_u^PK (masks),
    secagg_advertise)            n, threshold t                      c_u^PK (share cipher); it Shamir-shares
                                                                     s_u^SK and b_u and keeps the shares
  2 ShareKeys (query.            everyone's two public keys          its shares for each v, sealed under
    secagg_share)                                                    AES-GCM keyed by c_u, c_v: the server
                                                                     routes them and cannot read them
  3 MaskedInput (train.secagg)   global model, job, integer          y_u: n_k-weighted codes on the shared
                                 weight, modulus 2^k, the sealed     grid, masked mod 2^k, packed at k bits;
                                 shares addressed to u               n_k, loss, its own quantization error
  4 Unmasking (query.            survivors and dropped clients       its shares of b for survivors and of
    secagg_unmask)                                                   s^SK for dropped clients, never both

The server never holds a client's values, codes or secrets: only public keys, sealed
shares, masked vectors and the shares step 4 asks for. It removes the masks
(secagg.unmask_total) and decodes the survivors' weighted mean, which equals the
in-process SecureSum bit for bit: same seeded keys (Stream.SECAGG of the client's
position in the cohort), same grid, same weights, same modulus. A client that stops
answering after step 2 is a dropout: its masks come back from the survivors' shares.

A client keeps its round's secrets and the shares it holds in Flower's `context.state`
(on its SuperNode) between the steps.
"""
from __future__ import annotations

import warnings

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from ..core.aggregators.base import Aggregate, Aggregator
from ..core.errors import FLError
from ..core.quant import relative_error
from ..core.stages import Job, Upload
from ..privacy.secagg import (Party, SecAggError, _integer_weights, channel_bound, decode_flat, modulus_bits,
                              open_shares, pack_residues, seal_shares, shared_layout, shared_scale_mean,
                              threshold_for, to_residues, to_signed, unmask_total, unpack_residues, weighted_codes)
from ..privacy.stages import SECAGG_MARGIN, secure_upload_bytes
from .flower_faults import hold_if_asked
from .flower_model import unpack_global

ADVERTISE, SHARE, MASKED, UNMASK = "secagg_advertise", "secagg_share", "secagg", "secagg_unmask"
STATE = "secagg"  # the context.state entry holding a client's secrets for the current round


# -- client side ----------------------------------------------------------------------
def _state(context: Context, t: int) -> ConfigRecord:
    state = context.state.get(STATE) if STATE in context.state else None
    if state is None or int(state["round"]) != t:
        raise FLError(f"secure aggregation step of round {t} before this client advertised its keys for it")
    return state


def _reply(msg: Message, record: dict) -> Message:
    return Message(RecordDict({STATE: ConfigRecord(record)}), reply_to=msg)


def advertise(msg: Message, context: Context) -> Message:
    """Step 1: draw s_u, b_u (seeded, as in process), Shamir-share both, draw c_u; send the two public keys."""
    ask = msg.content[STATE]
    t, u, n, threshold = int(ask["round"]), int(ask["position"]), int(ask["clients"]), int(ask["threshold"])
    party = Party(int(ask["seed"]), t, u)
    key_shares, seed_shares = party.share(n, threshold, u)
    cipher = party.cipher_key()
    context.state[STATE] = ConfigRecord({
        "round": t, "position": u, "threshold": threshold, "mask-key": party.private.private_bytes_raw(),
        "seed": party.b, "cipher-key": cipher.private_bytes_raw(), "key-shares": key_shares,
        "seed-shares": seed_shares})
    return _reply(msg, {"position": u, "mask-key": party.public,
                        "cipher-key": cipher.public_key().public_bytes_raw()})


def share_keys(msg: Message, context: Context) -> Message:
    """Step 2: seal this client's two shares for every other advertised client; keep their mask keys."""
    ask = msg.content[STATE]
    t = int(ask["round"])
    state = _state(context, t)
    u = int(state["position"])
    ids = [int(v) for v in ask["ids"]]
    cipher = X25519PrivateKey.from_private_bytes(bytes(state["cipher-key"]))
    state["ids"], state["mask-keys"], state["cipher-keys"] = ids, list(ask["mask-keys"]), list(ask["cipher-keys"])
    sealed = [seal_shares(cipher, bytes(pub), u, v, t, bytes(state["key-shares"][v]), bytes(state["seed-shares"][v]))
              for v, pub in zip(ids, ask["cipher-keys"]) if v != u]
    return _reply(msg, {"to": [v for v in ids if v != u], "sealed": sealed})


def _hold_shares(state: ConfigRecord, ask: ConfigRecord, t: int) -> list[int]:
    """Open the shares sent to this client; keep them with its own (for step 4). Returns the cohort U2."""
    u = int(state["position"])
    cipher = X25519PrivateKey.from_private_bytes(bytes(state["cipher-key"]))
    publics = dict(zip(state["ids"], state["cipher-keys"]))
    held = {u: (bytes(state["key-shares"][u]), bytes(state["seed-shares"][u]))}
    for v, sealed in zip(ask["from"], ask["sealed"]):
        held[int(v)] = open_shares(cipher, bytes(publics[int(v)]), int(v), u, t, bytes(sealed))
    cohort = [int(v) for v in ask["cohort"]]
    if sorted(held) != sorted(cohort):
        raise SecAggError(f"client {u} holds shares of {sorted(held)}, but the round's cohort is {sorted(cohort)}")
    state["held"] = sorted(held)
    state["held-key-shares"] = [held[v][0] for v in sorted(held)]
    state["held-seed-shares"] = [held[v][1] for v in sorted(held)]
    return cohort


def masked_input(fed, msg: Message, context: Context, partition: int) -> Message:
    """Step 3: train as fl_lib does, put the weights on the shared grid, mask them against the cohort, send y_u."""
    job = msg.content["job"]
    k, t, bits = int(job["client"]), int(job["round"]), int(job["bits"])
    hold_if_asked("masked-input", k, t)  # test-only (flower_faults.py): a dropout after steps 1 and 2
    if k != partition:
        raise FLError(f"asked to train client {k} on the node holding partition {partition}")
    state = _state(context, t)
    cohort = _hold_shares(state, msg.content["shares"], t)
    global_state = unpack_global(msg.content["global"], fed.global_state)
    up = fed.client_side.upload(Job(k, t, bits), global_state)
    upload = {"client": k, "bits": bits, "blob": b"", "diverged": up.received is None, "error": 0.0}
    if up.received is not None:
        values = {n: v.float() for n, v in up.received.items() if v.is_floating_point()}
        bound = channel_bound(global_state, margin=SECAGG_MARGIN)
        k_bits = int(job["modulus-bits"])
        x = to_residues(weighted_codes(values, int(job["weight"]), bits, bound), 2 ** k_bits)
        publics = {int(v): bytes(pub) for v, pub in zip(state["ids"], state["mask-keys"]) if int(v) in cohort}
        party = Party.restore(bytes(state["mask-key"]), bytes(state["seed"]))
        y = party.mask(x, int(state["position"]), publics, 2 ** k_bits)
        upload["blob"] = pack_residues(y, k_bits)
        upload["error"] = relative_error(values, shared_scale_mean([values], None, bits, bound))
    metrics = MetricRecord({"num-examples": up.num_samples, "loss": up.loss})
    return Message(RecordDict({"upload": ConfigRecord(upload), "metrics": metrics}), reply_to=msg)


def unmask(msg: Message, context: Context) -> Message:
    """Step 4: shares of b for the survivors, of s^SK for the dropped; refuses a request for both of one client."""
    ask = msg.content[STATE]
    state = _state(context, int(ask["round"]))
    survivors, dropped = [int(v) for v in ask["survivors"]], [int(v) for v in ask["dropped"]]
    threshold, held = int(state["threshold"]), [int(v) for v in state["held"]]
    if set(survivors) & set(dropped):
        raise SecAggError(f"the server asks for both shares of client(s) {sorted(set(survivors) & set(dropped))}")
    if len(survivors) < threshold:
        raise SecAggError(f"{len(survivors)} survivors, threshold {threshold}: refusing to unmask")
    if not set(survivors + dropped) <= set(held):
        raise SecAggError(f"asked for shares of {sorted(set(survivors + dropped) - set(held))}, never received")
    at = {v: i for i, v in enumerate(held)}
    return _reply(msg, {"survivors": survivors, "seed-shares": [state["held-seed-shares"][at[v]] for v in survivors],
                        "dropped": dropped, "key-shares": [state["held-key-shares"][at[v]] for v in dropped]})


# -- server side -----------------------------------------------------------------------
class Unmasked(Aggregator):
    """Hands Federation.finish_round the aggregate the message rounds produced (the server has no values)."""

    name = "secure-sum"

    def __init__(self):
        self.result: Aggregate | None = None

    def aggregate(self, t, global_state, received, cohort):
        return self.result


class SecureRounds:
    """The server's side of steps 1 to 4 for each round; `send(messages)` delivers and returns the replies."""

    def __init__(self, fed, nodes: dict[int, int], send):
        secure_sum = fed.pipeline.aggregator
        self.fed, self.nodes, self.send = fed, nodes, send
        self.sizes, self.num_params, self.bits = fed.sizes, secure_sum.num_params, fed.cfg.bits
        self.unmasked = fed.pipeline.aggregator = Unmasked()

    def _ask(self, t: int, positions, kind: str, records: dict) -> dict[int, ConfigRecord]:
        """One step: send each position's record, return {position: answer} of those that answered."""
        messages = [Message(RecordDict({STATE: ConfigRecord(records[u])}), dst_node_id=self.nodes[self.cohort[u]],
                            message_type=f"query.{kind}", group_id=str(t)) for u in positions]
        answers = {}
        for reply in self.send(messages):
            if not reply.has_error():
                answers[self.position[reply.metadata.src_node_id]] = reply.content[STATE]
        return answers

    def setup(self, t: int, cohort: list[int], chosen: list[int], config_json: str, global_model: ArrayRecord,
              bits: dict) -> list[Message]:
        """Steps 1 and 2 for the round's cohort (every sampled client); returns step 3's train messages."""
        self.t, self.cohort, self.chosen = t, cohort, chosen
        self.position = {self.nodes[k]: u for u, k in enumerate(cohort) if k in self.nodes}
        n, seed = len(cohort), self.fed.cfg.seed
        self.threshold = threshold_for(n)
        present = [u for u, k in enumerate(cohort) if k in self.nodes]
        keys = self._ask(t, present, ADVERTISE, {u: {"seed": seed, "round": t, "position": u, "clients": n,
                                                     "threshold": self.threshold} for u in present})
        ids = sorted(keys)
        self.mask_keys = {u: bytes(keys[u]["mask-key"]) for u in ids}
        ask = {"round": t, "ids": ids, "mask-keys": [keys[u]["mask-key"] for u in ids],
               "cipher-keys": [keys[u]["cipher-key"] for u in ids]}
        sealed = self._ask(t, ids, SHARE, {u: ask for u in ids})
        self.shared = sorted(sealed)  # U2: the clients every survivor masks with
        inbox = {u: ([], []) for u in self.shared}
        for v in self.shared:
            for u, box in zip(sealed[v]["to"], sealed[v]["sealed"]):
                if int(u) in inbox:
                    inbox[int(u)][0].append(v)
                    inbox[int(u)][1].append(box)
        self.all_weights = [self.sizes[k] for k in cohort]  # fixed before anyone drops: it sets the modulus
        weights, self.modulus_bits = self._weights()
        messages = []
        for u in self.shared:
            k = cohort[u]
            if k not in chosen:  # late on the simulated clock: shared its keys, then drops
                continue
            job = ConfigRecord({"config": config_json, "round": t, "client": k, "bits": int(bits[k]),
                                "weight": weights[u], "modulus-bits": self.modulus_bits})
            shares = ConfigRecord({"from": inbox[u][0], "sealed": inbox[u][1], "cohort": self.shared})
            messages.append(Message(RecordDict({"global": global_model, "job": job, "shares": shares}),
                                    dst_node_id=self.nodes[k], message_type=f"train.{MASKED}", group_id=str(t)))
        return messages

    def _weights(self):
        weights = _integer_weights(self.all_weights, len(self.all_weights))
        return weights, modulus_bits(self.bits, sum(weights))

    def finish(self, replies) -> tuple[list[Upload], list[int]]:
        """Step 3's answers as fl_lib uploads, then step 4; sets the aggregate finish_round will take."""
        uploads, masked, errors = {}, {}, {}
        k_bits, size = self.modulus_bits, self.num_params + 1
        for reply in replies:
            if reply.has_error():
                warnings.warn(f"round {self.t}: a client failed ({reply.error.reason}); it drops out of the secure sum")
                continue
            up, metrics = reply.content["upload"], reply.content["metrics"]
            k = int(up["client"])
            u = self.position[reply.metadata.src_node_id]
            if not up["diverged"]:
                masked[u] = unpack_residues(bytes(up["blob"]), size, k_bits, 2 ** k_bits)
                errors[k] = float(up["error"])
            uploads[k] = Upload(k, int(up["bits"]), int(metrics["num-examples"]), float(metrics["loss"]), None, None,
                                None if up["diverged"] else {})
        ordered = [uploads[k] for k in self.cohort if k in uploads]  # client order, as in process
        senders = [up.client for up in ordered if not up.diverged]
        self.unmasked.result = self._aggregate(masked, [errors[k] for k in senders], len(senders))
        return ordered, [k for k in self.chosen if k not in uploads]

    def _aggregate(self, masked: dict, errors: list[float], senders: int) -> Aggregate:
        global_state = self.fed.global_state
        per_client = secure_upload_bytes(self.num_params, self.bits, self.all_weights)
        try:
            total = self._unmask(masked)
        except SecAggError as e:  # too few survivors to unmask: the server learns nothing this round
            warnings.warn(f"round {self.t}: {e}; the round's uploads cannot be unmasked and are lost")
            return Aggregate(global_state, per_client * senders, errors)
        bound = channel_bound(global_state, margin=SECAGG_MARGIN)
        scales, layout = shared_layout({n: v.float() for n, v in global_state.items() if v.is_floating_point()},
                                       self.bits, bound)
        mean = decode_flat(to_signed(total, 2 ** self.modulus_bits), scales, layout)
        state = {n: mean[n].to(g.device, g.dtype) if n in mean else g for n, g in global_state.items()}
        return Aggregate(state, per_client * senders, errors)

    def _unmask(self, masked: dict):
        """Step 4: ask the survivors for the shares that remove the masks, and remove them."""
        survivors = sorted(masked)
        dropped = [u for u in self.shared if u not in masked]
        if len(survivors) < self.threshold:
            raise SecAggError(f"only {len(survivors)} of {len(self.cohort)} clients survived; unmasking needs "
                              f"the shares of at least threshold={self.threshold}")
        ask = {"round": self.t, "survivors": survivors, "dropped": dropped}
        answers = self._ask(self.t, survivors, UNMASK, {u: ask for u in survivors})
        seeds = {u: [] for u in survivors}
        keys = {v: [] for v in dropped}
        for a in answers.values():
            for u, share in zip(a["survivors"], a["seed-shares"]):
                seeds[int(u)].append(bytes(share))
            for v, share in zip(a["dropped"], a["key-shares"]):
                keys[int(v)].append(bytes(share))
        return unmask_total(masked, seeds, keys, self.mask_keys, self.threshold, 2 ** self.modulus_bits)
