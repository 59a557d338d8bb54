"""The store's port for charging: one subscriber's account per operation.

Every charging operation first finds its subscriber through an index (identities, the
session owner index, the answer it refunds), then works on that subscriber's records
only, through one :class:`~ocs.ledger.account.Account`: the subscriber, the balance
record (money, the allowance buckets and the fraud rules' state: one record, one read and
one write per operation), the open reservations and the stored answers. Each record is
loaded once and written once. That is what a Redis
Cluster backend needs: every key of one operation in one hash slot (``{msisdn}``).

Writes outside the account, each with where it goes on a cluster:

==================  ==============================  ===================================
store               written by                      on a Redis Cluster
==================  ==============================  ===================================
session owners      a session's first reservation   index key, written before the
                    and its end                     account step; repaired on read
reservation expiry  the account's reservations      a sorted set per subscriber slot
answer expiry       every stored answer             the answer key's own TTL
CDR journal         settling operations             the subscriber's outbox
fraud cases         the fraud rules                 a hash in the account's slot
SMS queue           SMS submit and outcomes         the account (message records) and
                                                    a due set per slot
SMPP bind counts    binds (not an account's)        one shared hash (``{ocs}``)
refund marks        refunds                         the account (the debit's answer)
==================  ==============================  ===================================

``tests/ocs/charging/test_scope.py`` records what each operation touches on LMDB and
holds the engine to this.
"""
