"""SSH logon attempts inferred from the sizes and directions of the encrypted packets.

The engine (agent/engine/authsvc.c) records, per SSH flow, the payload size of the first
packets after each side's NEWKEYS: + from the client, - from the server (`Flow.ssh_sizes`).
As Zeek's SSH analyzer does for auth_attempts and auth_success, this reads the userauth
exchange out of them, with what every SSH server must send:

- the first server packet after the client's first one answers its SERVICE_REQUEST: its
  size A is the service-accept size (clients that ask again, as paramiko does before each
  attempt, get it again and are not counted);
- USERAUTH_SUCCESS carries one byte: the only server answer smaller than A. Nothing after
  it is authentication;
- USERAUTH_FAILURE carries the list of methods that can continue: the same size every
  time, F. Other answers (keyboard-interactive prompts, publickey PK_OK) appear as
  often as failures at most, so F is the commonest answer other than A (ties: the
  smaller). An answer the client always follows with a smaller packet is a prompt
  (keyboard-interactive INFO_REQUEST, then the shorter INFO_RESPONSE), not a verdict;
- a "none" request (OpenSSH, libssh and libssh2 clients ask it to learn the methods) is
  answered by a failure too, but is not a guess: it comes first, smaller than the real
  request after it. Its size is learnt from the first request; requests of that size
  answered by F are "none" again (libssh2 repeats it before every password).

Attempts = failures + (1 if success). Measured accuracy, per method and client, is in
docs/DETECTIONS.md (bench/sshauth_measure.py).
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple


class SshAuth(NamedTuple):
    failures: int  # failed attempts answered by the server
    success: bool  # a USERAUTH_SUCCESS was seen
    started: bool  # the encrypted exchange reached the userauth phase

    @property
    def attempts(self) -> int:
        return self.failures + self.success


def infer_auth(sizes: tuple[int, ...] | list[int]) -> SshAuth:
    """The attempts and outcome an SSH session's recorded sizes show (see module doc)."""
    # the exchange starts at the client's first encrypted packet (SERVICE_REQUEST); a
    # server packet before it (EXT_INFO after NEWKEYS) is not an answer
    start = next((i for i, s in enumerate(sizes) if s > 0), None)
    if start is None:
        return SshAuth(0, False, False)
    accept = next((-s for s in sizes[start + 1 :] if s < 0), None)
    if accept is None:
        return SshAuth(0, False, False)
    # exchanges after the first accept: (request size, answer size; 0: success), in
    # order; a request sent in several segments, or several answers, keep the last
    first = sizes[start]
    pairs: list[tuple[int, int]] = []
    req = 0
    seen_accept = False
    success = False
    for s in sizes[start + 1 :]:
        if s < 0:
            if not seen_accept:
                seen_accept = True
                req = 0
                continue
            if -s < accept:
                success = True
                if req:
                    pairs.append((req, 0))
                break
            if req:
                pairs.append((req, -s))
                req = 0
        else:
            req = s
    # a client asking for the service again (paramiko, before each attempt) is no request
    pairs = [(r, a) for r, a in pairs if not (r == first and a == accept)]
    # an answer the client follows with a smaller packet every time is a prompt
    # (keyboard-interactive INFO_REQUEST, answered by the shorter INFO_RESPONSE), not a
    # verdict: after a failure the client starts a whole new request
    follows: dict[int, list[bool]] = {}
    for i in range(len(pairs) - 1):
        follows.setdefault(pairs[i][1], []).append(pairs[i + 1][0] < pairs[i][0])
    auth = [(r, a) for r, a in pairs if a]  # userauth answers, success aside
    answers = Counter(a for _, a in auth if not all(follows.get(a, [False])))
    if not answers:
        return SshAuth(0, success, True)
    # ties: first the answer to a first request smaller than the next (a "none" probe,
    # always answered by a failure: on a publickey-only server that failure, with its
    # short methods list, has the accept size, and the one PK_OK before the success must
    # not win the tie), then not the accept size (an empty keyboard-interactive prompt
    # may have it), then the smaller (a PK_OK, carrying the key, is larger than a failure)
    none_like = len(auth) >= 2 and auth[0][0] < auth[1][0]
    fail = min(
        answers,
        key=lambda a: (-answers[a], not (none_like and a == auth[0][1]), a == accept, a),
    )
    none_size = 0
    if none_like and auth[0][1] == fail:
        none_size = auth[0][0]
    failures = sum(1 for r, a in auth if a == fail and r != none_size)
    return SshAuth(failures, success, True)
