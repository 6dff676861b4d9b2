"""policy/shares.py and policy/admission.py: what each address holds, its caps, and who makes
way for a newcomer, with plain strings for addresses and sessions."""
import random
import unittest

from policy.admission import REFUSE, WAIT, Admission
from policy.shares import Shares


class SharesTests(unittest.TestCase):
    def test_the_busiest_address_follows_adds_and_removes(self):
        shares = Shares()
        self.assertIsNone(shares.busiest())
        shares.add("a", 1)
        shares.add("b", 2)
        shares.add("b", 3)
        self.assertEqual((shares.busiest(), shares.count("b"), shares.count("z")), ("b", 2, 0))
        shares.remove("b", 2)
        self.assertEqual(shares.busiest(), "a")      # a tie: the one that got there first
        shares.remove("a", 1)
        shares.remove("b", 3)
        self.assertIsNone(shares.busiest())
        self.assertEqual(list(shares.held("a")), [])

    def test_adding_twice_and_removing_what_is_not_held_change_nothing(self):
        shares = Shares()
        shares.add("a", 1)
        shares.add("a", 1)
        shares.remove("a", 2)
        shares.remove("q", 1)
        self.assertEqual((shares.count("a"), list(shares.held("a"))), (1, [1]))

    def test_matches_counting_by_hand_under_random_changes(self):
        rng = random.Random(7)
        shares, truth = Shares(), {}
        for step in range(5000):
            key, item = "h%d" % rng.randrange(12), rng.randrange(40)
            if rng.random() < 0.55:
                shares.add(key, item)
                truth.setdefault(key, set()).add(item)
            else:
                shares.remove(key, item)
                truth.get(key, set()).discard(item)
            most = max((len(v) for v in truth.values()), default=0)
            busiest = shares.busiest()
            if most == 0:
                self.assertIsNone(busiest, step)
            else:
                self.assertEqual(len(truth[busiest]), most, step)
            self.assertEqual(shares.count(key), len(truth.get(key, ())), step)


class AdmissionTests(unittest.TestCase):
    def test_an_address_at_its_cap_is_refused_and_one_flooding_handshakes_waits(self):
        admission = Admission(per_address=3, unconfirmed_cap=10, unconfirmed_per_address=2)
        admission.added("a", "a1")
        admission.added("a", "a2")
        self.assertEqual(admission.refusal("a"), WAIT)       # two handshakes in flight
        self.assertIsNone(admission.refusal("b"))
        admission.confirmed("a", "a1")
        admission.added("a", "a3")
        self.assertEqual(admission.refusal("a"), REFUSE)     # three sessions
        admission.removed("a", "a2", was_confirmed=False)
        self.assertEqual((admission.refusal("a"), admission.unconfirmed), (None, 1))

    def test_all_handshakes_in_flight_make_everybody_wait(self):
        admission = Admission(per_address=9, unconfirmed_cap=2, unconfirmed_per_address=2)
        admission.added("a", "a1")
        admission.added("b", "b1")
        self.assertEqual(admission.refusal("c"), WAIT)

    def test_the_victim_is_of_the_address_holding_most_unproven_first_then_idlest(self):
        admission = Admission(per_address=9, unconfirmed_cap=9, unconfirmed_per_address=9)
        self.assertIsNone(admission.maybe_victim())
        for host, session in (("a", "a1"), ("b", "b1"), ("b", "b2"), ("b", "b3"), ("c", "c1")):
            admission.added(host, session)
        admission.proved("b", "b1")
        admission.proved("b", "b2")
        admission.heard("b", "b1")                    # b2 is now the one heard from longest ago
        admission.heard("b", "b3")                    # unproven: keeps its place
        self.assertEqual(admission.maybe_victim(), "b3")
        admission.removed("b", "b3", was_confirmed=False)
        self.assertEqual(admission.maybe_victim(), "b2")
        admission.removed("b", "b2", was_confirmed=False)
        self.assertEqual(admission.maybe_victim(), "a1")     # one each: the address first there
        self.assertEqual(admission.unconfirmed, 3)


if __name__ == "__main__":
    unittest.main()
