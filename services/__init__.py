"""The console's business services: thin views call these, the scheduler runs some of them.

Conventions, the same in every module:

- Each function takes the SQLAlchemy `Session` opened at the edge (a console request, a
  scheduler job), the `site` id, the acting `Actor` (schoolgate.services.actor) and `now`
  (an aware datetime from schoolgate.clock). Services flush but never commit: the caller
  commits, or rolls back when a ServiceError is raised.
- Refusals raise a `ServiceError` subclass (schoolgate.services.errors) whose message is
  plain text for the user and whose `field` names the form field at fault.
- Every change is appended to the audit log; a change that affects filtering (exceptions,
  bans, site blocks, devices, people) bumps the `policy_overlay` generation, which DNS and
  the proxy poll, so it applies within seconds.

Modules:
  access_requests  appendix A: submit, triage, decide, status lookup, withdraw
  reports          appendix B: submit, action (site blocks), close
  site_blocks      add and remove technician blocks
  alerts           the DSL's cases: list, note, status, assess, resolve
  alert_rules      AlertEngine.scan and the rules (circumvention, repeated blocks, terms, hours)
  keywords         safeguarding term lists and matching
  bans             ban a device to the supervised role, lift a ban
  policy_exceptions list and revoke exceptions
  register         devices and people: CRUD and CSV import
  csvexport        CSV export with formula protection
  activity         activity search and dashboard figures
  digest, mailer   the daily digest and immediate alert emails
  schooldays       school-day test by the policy's calendar
"""
