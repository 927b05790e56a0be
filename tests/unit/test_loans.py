"""server.loans: worker quota lent between the two servers; the fleets never exceed both maxima."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from server.loans import Loans


def test_allowed_is_own_quota_minus_lent_plus_borrowed():
    loans = Loans(5)
    assert loans.allowed == 5
    loans.lent, loans.borrowed = 2, 3
    assert loans.allowed == 6


def test_borrow_request_asks_only_beyond_the_own_quota():
    loans = Loans(max_workers=4, lent=1)  # own quota now 3
    assert loans.borrow_request(wanted=2, have=2) == {"want_borrow": 0, "in_use": 0}
    assert loans.borrow_request(wanted=7, have=3) == {"want_borrow": 4, "in_use": 0}
    loans.borrowed = 2
    assert loans.borrow_request(wanted=7, have=5) == {"want_borrow": 4, "in_use": 2}
    # All that runs beyond the own quota is reported, borrowed or not (adopted workers after a
    # restart run before any loan is known again); the lender keeps at most what it lent of it.
    assert loans.borrow_request(wanted=0, have=9) == {"want_borrow": 0, "in_use": 6}


def test_grant_lends_only_what_the_lender_does_not_need():
    lender = Loans(5)
    assert lender.grant(want=10, in_use=0, own_have=1, own_wanted=2) == 3
    assert (lender.lent, lender.allowed) == (3, 2)
    assert lender.grant(want=10, in_use=0, own_have=0, own_wanted=5) == 0
    assert lender.grant(want=-3, in_use=-1, own_have=0, own_wanted=0) == 0


def test_grant_never_takes_back_quota_the_borrower_uses():
    lender = Loans(5)
    assert lender.grant(want=3, in_use=0, own_have=0, own_wanted=0) == 3
    # the lender now wants everything back, but the borrower runs two workers on the loan
    assert lender.grant(want=3, in_use=2, own_have=2, own_wanted=5) == 2
    # in use can never be more than what was lent, nor more than the lender has free
    assert lender.grant(want=0, in_use=9, own_have=2, own_wanted=5) == 2
    assert lender.grant(want=0, in_use=2, own_have=4, own_wanted=5) == 1


def test_a_lender_holds_what_it_lent_however_long_the_borrower_is_silent():
    # Was "expire_lent takes quota back from a silent borrower": deliberately removed. A lender
    # that took its loan back after 30 s of silence let a partitioned borrower keep running on it
    # (the fleets then exceeded both maxima); now only the borrower's next sync changes the loan.
    lender = Loans(5)
    lender.grant(want=2, in_use=0, own_have=0, own_wanted=0)
    assert (lender.lent, lender.allowed) == (2, 3)
    assert lender.grant(want=0, in_use=0, own_have=0, own_wanted=5) == 0  # the borrower says it is done
    assert lender.allowed == 5


def test_an_unreachable_lender_shrinks_the_loan_to_what_runs_on_it():
    borrower = Loans(4, borrowed=3)  # allowed 7
    borrower.peer_unreachable(have=6)  # two of its workers run on the loan
    assert (borrower.borrowed, borrower.allowed) == (2, 6)
    borrower.peer_unreachable(have=7)  # never grows without the lender's word
    assert borrower.borrowed == 2
    borrower.peer_unreachable(have=1)
    assert (borrower.borrowed, borrower.allowed) == (0, 4)
    lent_too = Loans(4, borrowed=2, lent=1)  # own quota 3
    lent_too.peer_unreachable(have=4)
    assert lent_too.borrowed == 1


class Server:
    """One server's side in the simulation: its loans, the fleet it wants and the fleet it has."""

    def __init__(self, max_workers: int) -> None:
        self.loans = Loans(max_workers)
        self.wanted = 0
        self.have = 0

    def launch(self) -> None:
        """The autoscaler launches up to what it wants, never beyond what it is allowed."""
        self.have = max(self.have, min(self.wanted, self.loans.allowed))


def sync(borrower: Server, lender: Server) -> None:
    request = borrower.loans.borrow_request(borrower.wanted, borrower.have)
    borrower.loans.borrowed = lender.loans.grant(
        request["want_borrow"], request["in_use"], own_have=lender.have, own_wanted=lender.wanted
    )


# One step of one server: maybe a new wish, some idle workers leaving, maybe a sync with the peer
# (as borrower), maybe an autoscaler pass; the two servers' steps interleave in any order.
steps = st.lists(
    st.tuples(
        st.integers(0, 1),
        st.sampled_from([None, 0, 1, 2, 3, 5, 8]),
        st.integers(0, 3),
        st.booleans(),
        st.booleans(),
    ),
    max_size=30,
)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 4), st.integers(0, 4), steps)
# the lender stops wanting its own workers, which keep running: it must not lend their quota
@example(5, 0, [(0, 5, 0, False, True), (0, 0, 0, False, False), (1, 5, 0, True, True)])
# the lender wants its quota back while the borrower runs workers on it
@example(2, 0, [(1, 2, 0, True, True), (0, 2, 0, False, False), (1, None, 0, True, False), (0, None, 0, False, True)])
def test_the_two_fleets_never_exceed_both_maxima(max_a, max_b, actions):
    servers = [Server(max_a), Server(max_b)]
    for index, wanted, leaving, syncs, launches in actions:
        server, other = servers[index], servers[1 - index]
        if wanted is not None:
            server.wanted = wanted
        server.have = max(0, server.have - leaving)
        if syncs:
            sync(server, other)
        if launches:
            server.launch()
        assert servers[0].have + servers[1].have <= max_a + max_b, (servers[0].__dict__, servers[1].__dict__)
        assert all(s.loans.lent >= 0 and s.loans.borrowed >= 0 for s in servers)
