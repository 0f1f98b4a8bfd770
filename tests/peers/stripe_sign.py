"""Signs a webhook payload the way the processor does, with its own
library (PyPI `stripe`): reads the payload on stdin, prints the
Stripe-Signature header. Arguments: SECRET [TIMESTAMP]."""

import sys

import stripe

payload = sys.stdin.read()
secret = sys.argv[1]
timestamp = int(sys.argv[2]) if len(sys.argv) > 2 else None
print(stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp))
