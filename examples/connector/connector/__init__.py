"""An example payment connector whose five periodic services cronledger records.

The connector takes jobs from AI agents: a job waits for its payment, then
runs on Kodosumi (the agent runtime) until Kodosumi reports it finished.
Five services move the jobs along, and most of their runs find nothing to do:

==================  =================  ==========================================
service             display name       work per run
==================  =================  ==========================================
authenticator       API Key Sync       refresh API keys that expire soon
flow-sync           Flow Sync          copy flows.json into the flows table
payment-checker     Payment Checker    move paid jobs to ``running``
kodosumi-starter    Kodosumi Starter   start ``running`` jobs on Kodosumi
kodosumi-status     Kodosumi Status    complete jobs that Kodosumi finished
==================  =================  ==========================================

Each work function in ``connector.services`` takes an engine and ``now`` and
returns the number of items it handled. How a run is recorded is up to the
caller: ``connector.worker`` uses the Python API, and ``python -m connector
run NAME`` is what ``cronledger run`` and the scheduler execute.
"""
