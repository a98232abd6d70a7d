"""Table templates of the simulator: the columns of account, contact, opportunity and new_project.

Each template declares its attributes once; the metadata endpoints (metadata.py) and the row
generator (values.py) both read these definitions, so rows and metadata cannot disagree.
"""

from __future__ import annotations

from dataclasses import replace

from sync.simulator.attributes import (
    AttributeDef,
    TableTemplate,
    boolean,
    choice,
    date,
    key,
    lookup,
    memo,
    multiselect,
    number,
    state_status,
    string,
    system_columns,
)
from sync.simulator.edgevalues import (
    BIGINT_EDGES,
    DATE_EDGES,
    DATETIME_EDGES,
    DECIMAL_EDGES,
    INTEGER_EDGES,
    MEMO_EDGES,
    MEMO_LENGTH,
    MONEY_EDGES,
    TEXT_EDGES,
    wide_attributes,
    with_edges,
)


def _customize(attrs: list[AttributeDef]) -> tuple[AttributeDef, ...]:
    """Mark the columns of a custom table whose names carry the publisher prefix as custom."""
    return tuple(replace(a, custom=a.logical_name.startswith("new_")) for a in attrs)


ACTIVE = {0: "Active", 1: "Inactive"}
ACTIVE_STATUS = {1: ("Active", 0), 2: ("Inactive", 1)}

ACCOUNT = TableTemplate(
    "account",
    "Account",
    "accounts",
    "Account",
    "Accounts",
    1,
    "accountid",
    "name",
    False,
    (
        key("accountid", "Account"),
        string("name", "Account Name", "company", primary_name=True),
        string("accountnumber", "Account Number", "code", null_ratio=0.1),
        string("telephone1", "Main Phone", "phone", null_ratio=0.1),
        string("emailaddress1", "Email", "email", null_ratio=0.1),
        memo("description", "Description"),
        number("numberofemployees", "Integer", "Number of Employees", 1, 50000, null_ratio=0.1),
        number("revenue", "Money", "Annual Revenue", 10000, 100000000, null_ratio=0.1),
        number("address1_latitude", "Double", "Address 1: Latitude", -90, 90, null_ratio=0.1),
        *boolean("donotemail", "Do not allow Emails", ("Allow", "Do Not Allow")),
        *choice(
            "industrycode",
            "Industry",
            {1: "Accounting", 2: "Agriculture", 3: "Consulting", 4: "Retail"},
        ),
        *lookup("primarycontactid", "Primary Contact", ("contact",)),
        *lookup("parentaccountid", "Parent Account", ("account",)),
        *state_status(ACTIVE, ACTIVE_STATUS),
        *system_columns(),
    ),
)

CONTACT = TableTemplate(
    "contact",
    "Contact",
    "contacts",
    "Contact",
    "Contacts",
    2,
    "contactid",
    "fullname",
    False,
    (
        key("contactid", "Contact"),
        string("fullname", "Full Name", "person", primary_name=True),
        string("firstname", "First Name", "firstname"),
        string("lastname", "Last Name", "lastname"),
        string("emailaddress1", "Email", "email", null_ratio=0.1),
        string("telephone1", "Business Phone", "phone", null_ratio=0.2),
        memo("description", "Description"),
        date("birthdate", "Birthday", behavior="DateOnly", null_ratio=0.2),
        number("numberofchildren", "Integer", "No. of Children", 0, 6, null_ratio=0.3),
        number("annualincome", "Money", "Annual Income", 20000, 250000, null_ratio=0.2),
        *boolean("donotphone", "Do not allow Phone Calls", ("Allow", "Do Not Allow")),
        *choice("gendercode", "Gender", {1: "Male", 2: "Female"}),
        *lookup("parentcustomerid", "Company Name", ("account", "contact"), kind="Customer"),
        *state_status(ACTIVE, ACTIVE_STATUS),
        *system_columns(),
    ),
)

OPPORTUNITY = TableTemplate(
    "opportunity",
    "Opportunity",
    "opportunities",
    "Opportunity",
    "Opportunities",
    3,
    "opportunityid",
    "name",
    False,
    (
        key("opportunityid", "Opportunity"),
        string("name", "Topic", "deal", primary_name=True),
        memo("description", "Description"),
        number("estimatedvalue", "Money", "Est. Revenue", 1000, 5000000, null_ratio=0.1),
        number("closeprobability", "Integer", "Probability", 0, 100, null_ratio=0.1),
        # UserLocal behaviour, DateOnly format (as in a real org): full timestamps on the wire.
        date("estimatedclosedate", "Est. Close Date", date_format="DateOnly", null_ratio=0.1),
        date("actualclosedate", "Actual Close Date", date_format="DateOnly", null_ratio=0.6),
        *boolean("isrevenuesystemcalculated", "Revenue", ("User Provided", "System Calculated")),
        *choice("opportunityratingcode", "Rating", {1: "Hot", 2: "Warm", 3: "Cold"}),
        *lookup("customerid", "Potential Customer", ("account", "contact"), kind="Customer"),
        *lookup("parentaccountid", "Account", ("account",)),
        *lookup("parentcontactid", "Contact", ("contact",)),
        *state_status(
            {0: "Open", 1: "Won", 2: "Lost"},
            {
                1: ("In Progress", 0),
                2: ("On Hold", 0),
                3: ("Won", 1),
                4: ("Canceled", 2),
                5: ("Out-Sold", 2),
            },
        ),
        *system_columns(),
    ),
)

NEW_PROJECT = TableTemplate(
    "new_project",
    "new_Project",
    "new_projects",
    "Project",
    "Projects",
    10001,
    "new_projectid",
    "new_name",
    True,
    _customize(
        [
            key("new_projectid", "Project"),
            string("new_name", "Name", "project", primary_name=True),
            string("new_code", "Code", "code"),
            memo("new_notes", "Notes"),
            number("new_budget", "Money", "Budget", 500, 2000000, null_ratio=0.1),
            number("new_hours", "Decimal", "Hours", 0, 10000, null_ratio=0.1),
            number("new_ratio", "Double", "Completion Ratio", 0, 1),
            number("new_priority", "Integer", "Priority", 1, 5),
            number("new_sequence", "BigInt", "Sequence", 1, 9_000_000_000_000),
            *boolean("new_isbillable", "Billable"),
            date("new_startdate", "Start Date", behavior="DateOnly"),
            date(
                "new_deadline",
                "Deadline",
                behavior="TimeZoneIndependent",
                date_format="DateOnly",
                null_ratio=0.2,
            ),
            date("new_handoverat", "Handover", behavior="TimeZoneIndependent", null_ratio=0.3),
            *lookup("new_accountid", "Account", ("account",)),
            *choice(
                "new_category",
                "Category",
                {100000000: "Internal", 100000001: "Customer", 100000002: "Research"},
                global_option_set="new_projectcategory",
            ),
            *multiselect(
                "new_tags", "Tags", {1: "Design", 2: "Build", 3: "Test", 4: "Deploy", 5: "Support"}
            ),
            AttributeDef(
                "new_externalid",
                "Uniqueidentifier",
                "UniqueidentifierType",
                "External Id",
                null_ratio=0.1,
            ),
            *state_status(ACTIVE, ACTIVE_STATUS),
            *system_columns(),
        ]
    ),
)

# Values that break careless clients (edgevalues.py), in a table whose entity set name is not
# its logical name plus "s" (Dataverse pluralises English: person → people).
NEW_PERSON = TableTemplate(
    "new_person",
    "new_Person",
    "new_people",
    "Person",
    "People",
    10002,
    "new_personid",
    "new_name",
    True,
    _customize(
        [
            key("new_personid", "Person"),
            string("new_name", "Name", "person", primary_name=True),
            with_edges(string("new_nickname", "Nickname", null_ratio=0.1), TEXT_EDGES),
            with_edges(memo("new_biography", "Biography"), MEMO_EDGES, max_length=MEMO_LENGTH),
            with_edges(
                number("new_salary", "Money", "Salary", 0, 500_000, null_ratio=0.1),
                MONEY_EDGES,
                precision=4,
            ),
            with_edges(
                number("new_score", "Decimal", "Score", -1000, 1000, null_ratio=0.1),
                DECIMAL_EDGES,
                precision=10,
            ),
            with_edges(number("new_followers", "BigInt", "Followers", 0, 10**12), BIGINT_EDGES),
            with_edges(number("new_rank", "Integer", "Rank", 1, 100), INTEGER_EDGES),
            with_edges(date("new_lastseenat", "Last Seen", null_ratio=0.1), DATETIME_EDGES),
            with_edges(
                date("new_birthday", "Birthday", behavior="DateOnly", null_ratio=0.1), DATE_EDGES
            ),
            number("new_height", "Double", "Height", 0.5, 2.5, null_ratio=0.2),
            *boolean("new_isactive", "Active"),
            *state_status(ACTIVE, ACTIVE_STATUS),
            *system_columns(),
        ]
    ),
)

#: Row columns of new_inspection: its own 389 custom columns plus 11 every table has.
WIDE_CUSTOM_COLUMNS = 389

# A form-like custom table with 400 columns (long names: its $select is over 12 KB).
NEW_INSPECTION = TableTemplate(
    "new_inspection",
    "new_Inspection",
    "new_inspections",
    "Inspection",
    "Inspections",
    10003,
    "new_inspectionid",
    "new_name",
    True,
    _customize(
        [
            key("new_inspectionid", "Inspection"),
            string("new_name", "Name", "code", primary_name=True),
            *wide_attributes(WIDE_CUSTOM_COLUMNS),
            *state_status(ACTIVE, ACTIVE_STATUS),
            *system_columns(),
        ]
    ),
)

TEMPLATES: dict[str, TableTemplate] = {
    t.logical_name: t
    for t in (ACCOUNT, CONTACT, OPPORTUNITY, NEW_PROJECT, NEW_PERSON, NEW_INSPECTION)
}

#: Fixed rows other tables point at (owners and the currency), as (logical name, names).
OWNERS = {
    "systemuser": ("Avery Howard", "Jordan Lee", "Sam Patel", "Riley Chen", "Morgan Diaz"),
    "team": ("Sales Team",),
}
CURRENCY_NAME = "US Dollar"
