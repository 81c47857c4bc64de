"""The built-in content categories every policy has, and the reviewed list of support sites.

The ids cover the UK Safer Internet Centre's "appropriate filtering" categories (the ones the
DfE filtering and monitoring standards expect every school filter to block), plus `dating`,
the school's own `social_media` and `circumvention`, the always-locked `illegal`, and
`support`, which no rule, list, ban or block can ever close: a child looking for help must
always reach it. Only `illegal` outranks it.

Each category carries the published rationale: plain words a headteacher can read, which the
console shows beside the category and the block page cites. A policy may reword a category's
name and rationale in `[categories.ID]`, and add categories of its own; it can never unlock
`illegal` or `circumvention`, nor make `support` blockable (the compiler refuses).

Every category has a canary: a name under the reserved `.invalid` top-level domain that the
compiled policy always files under that category, whatever lists are installed. A self-test
asks the running DNS daemon for a canary and checks the verdict, so it proves that the rules
for the category are in force without depending on which real names a list holds today.
"""

from __future__ import annotations

from dataclasses import dataclass

CANARY_DOMAIN = "category-test.schoolgate.invalid"

ILLEGAL = "illegal"
SUPPORT = "support"
CIRCUMVENTION = "circumvention"
SOCIAL_MEDIA = "social_media"


def canary_for(category_id: str) -> str:
    """`self_harm` -> `self-harm.category-test.schoolgate.invalid` (DNS labels take no `_`)."""
    return f"{category_id.replace('_', '-')}.{CANARY_DOMAIN}"


@dataclass(frozen=True, slots=True)
class BuiltinCategory:
    id: str
    name: str
    rationale: str  # the published category rationale
    uksic: bool = False  # one of the UK Safer Internet Centre's appropriate-filtering categories
    harmful: bool = False  # a harmful-content category a school blocks for pupils
    locked: bool = False  # every block in it is a hard block (no exception, approval or rule lifts it)
    always_allowed: bool = False  # `support`: nothing can block it
    flags: frozenset[str] = frozenset()

    @property
    def canary(self) -> str:
        return canary_for(self.id)


CATALOGUE: tuple[BuiltinCategory, ...] = (
    BuiltinCategory(
        ILLEGAL,
        "Illegal content",
        "Child sexual abuse material and unlawful terrorist content, as listed by the Internet Watch "
        "Foundation and the police Counter Terrorism Internet Referral Unit. The law requires it to be "
        "blocked; no rule, exception or approval can open it.",
        locked=True,
        flags=frozenset({ILLEGAL}),
    ),
    BuiltinCategory(
        SUPPORT,
        "Help and support for children",
        "Childline, the NSPCC, CEOP, Samaritans, Kooth, Shout, YoungMinds and other services a child "
        "can turn to for help. They are always open to everyone, including banned devices: a child "
        "looking for help must always reach it.",
        always_allowed=True,
    ),
    BuiltinCategory(
        "pornography",
        "Pornography",
        "Sites that show sexual acts or sexually explicit images. Not suitable for children, and not "
        "for use at school.",
        uksic=True,
        harmful=True,
    ),
    BuiltinCategory(
        "gambling",
        "Gambling",
        "Betting, casino, lottery and other sites where money is staked. Gambling is illegal for "
        "children and can lead to harm.",
        uksic=True,
        harmful=True,
    ),
    BuiltinCategory(
        "drugs",
        "Drugs and substance abuse",
        "Sites that show or promote the illegal use of drugs or other substances. Health and "
        "education sites about drugs are not in this category.",
        uksic=True,
        harmful=True,
    ),
    BuiltinCategory(
        "extremism",
        "Extremism",
        "Sites that promote terrorism and terrorist ideologies, violence or intolerance (the Prevent "
        "duty).",
        uksic=True,
        harmful=True,
    ),
    BuiltinCategory(
        "hate",
        "Discrimination and hate",
        "Sites that promote unjust or prejudicial treatment of people because of race, religion, age, "
        "sex, disability, sexual orientation or gender identity.",
        uksic=True,
        harmful=True,
    ),
    BuiltinCategory(
        "malware",
        "Malware, phishing and hacking",
        "Sites that spread viruses or steal passwords (phishing), and tools for breaking into "
        "computers or attacking networks. They put pupils, staff and the school's systems at risk.",
        uksic=True,
        harmful=True,
    ),
    BuiltinCategory(
        "misinformation",
        "Misinformation",
        "Sites known for publishing deliberately false or misleading information presented as fact.",
        uksic=True,
        harmful=True,
    ),
    BuiltinCategory(
        "piracy",
        "Piracy and copyright theft",
        "Sites that illegally share copyrighted films, music, games and software.",
        uksic=True,
        harmful=True,
    ),
    BuiltinCategory(
        "self_harm",
        "Self-harm, suicide and eating disorders",
        "Sites that promote or show deliberate self-harm, suicide or eating disorders. Help for anyone "
        "affected is in the support category, which is always open.",
        uksic=True,
        harmful=True,
    ),
    BuiltinCategory(
        "violence",
        "Violence",
        "Sites that show or promote the use of physical force intended to hurt or kill.",
        uksic=True,
        harmful=True,
    ),
    BuiltinCategory(
        "dating",
        "Dating",
        "Dating and meeting sites for adults. Children using them can be contacted by adults they do "
        "not know.",
        harmful=True,
    ),
    BuiltinCategory(
        SOCIAL_MEDIA,
        "Social media",
        "Social networks and messaging services. The school's social media policy says who may use "
        "them, and when.",
    ),
    BuiltinCategory(
        CIRCUMVENTION,
        "Filter circumvention",
        "VPNs, web proxies and encrypted DNS services that would get round the school's filtering. "
        "They are never allowed on the school network, and attempts are reported to the Designated "
        "Safeguarding Lead.",
        locked=True,
        flags=frozenset({CIRCUMVENTION}),
    ),
)

BUILTIN: dict[str, BuiltinCategory] = {c.id: c for c in CATALOGUE}
UKSIC_CATEGORIES: tuple[str, ...] = tuple(c.id for c in CATALOGUE if c.uksic)
HARMFUL_CATEGORIES: tuple[str, ...] = tuple(c.id for c in CATALOGUE if c.harmful)

# The reviewed support list every policy has: each domain covers its subdomains. A school adds
# more with a list or a service in the `support` category. Reviewed for: a UK service a child
# or young person can turn to for help (or report harm through), run by a charity or a public
# body, on a domain that organisation owns. Shared platforms (nhs.uk, gov.uk) are left out: a
# whole platform would be always-open, and they are not blocked by any category anyway.
SUPPORT_DOMAINS: tuple[tuple[str, str], ...] = (
    ("childline.org.uk", "Childline (0800 1111), including Report Remove"),
    ("nspcc.org.uk", "NSPCC and the NSPCC helpline (0808 800 5000)"),
    ("ceop.police.uk", "CEOP Safety Centre: reporting online sexual abuse to the police"),
    ("thinkuknow.co.uk", "CEOP Education (ThinkUKnow)"),
    ("samaritans.org", "Samaritans (116 123)"),
    ("kooth.com", "Kooth: online mental health support for young people"),
    ("giveusashout.org", "Shout 85258: text support"),
    ("youngminds.org.uk", "YoungMinds"),
    ("mind.org.uk", "Mind"),
    ("papyrus-uk.org", "PAPYRUS: prevention of young suicide (HOPELINE247)"),
    ("beateatingdisorders.org.uk", "Beat: eating disorders"),
    ("iwf.org.uk", "Internet Watch Foundation: reporting child sexual abuse images"),
    ("reportharmfulcontent.com", "Report Harmful Content (UK Safer Internet Centre)"),
    ("saferinternet.org.uk", "UK Safer Internet Centre"),
    ("childnet.com", "Childnet"),
    ("themix.org.uk", "The Mix: support for under-25s"),
    ("thecalmzone.net", "CALM: Campaign Against Living Miserably"),
    ("barnardos.org.uk", "Barnardo's"),
    ("kidscape.org.uk", "Kidscape: bullying"),
    ("anti-bullyingalliance.org.uk", "Anti-Bullying Alliance"),
    ("switchboard.lgbt", "Switchboard: LGBT+ helpline"),
    ("nationaldahelpline.org.uk", "National Domestic Abuse Helpline"),
    ("talktofrank.com", "FRANK: honest information about drugs"),
    ("victimsupport.org.uk", "Victim Support"),
)
