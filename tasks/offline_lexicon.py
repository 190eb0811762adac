"""The word lists the offline judge's subject-bound assertions read by
(:mod:`tasks.offline_assertions`): directions, comparisons, modes, scopes and states that
exclude each other. Plain English, written by hand: no list of this kind ships offline.
"""

from __future__ import annotations

from tasks.offline_text import wordset

UP = wordset(
    "rose rise rises risen rising increase increased increases grew grow grows growing climbed "
    "climb climbs gain gained gains improved improve boost boosted surged jumped doubled "
    "exceeded expanded")
DOWN = wordset(
    "fell fall falls fallen falling drop dropped drops declined decline declines decrease "
    "decreased decreases shrank shrunk slipped halved dwindled")
# "went up", "came down": a direction without a figure after it
MOVED = wordset("went go goes gone going came come comes coming")
NARROWING = wordset("from in at on among within across outside")
AFTER_TREND = wordset("another again back further last this every each year overall nearly "
                       "almost steadily")
CHANGE = wordset("change changes changed changing vary varies")
STABLE = wordset(
    "unchanged stable steady flat stay stays stayed remain remains remained stabilise "
    "stabilize")
MORE = wordset("larger bigger greater higher more above over longer heavier")
LESS = wordset("smaller less lower fewer below under shorter lighter")
# what is expected, planned or supposed is not what happened
EXPECTED = wordset(
    "will would expected expects expect forecast forecasts projected planned could may might "
    "should likely predicted predicts whether recommends recommend recommended recommendations "
    "proposes propose proposed proposal urged urges guiding guidance outlook")
INTENDS = wordset("plan plans aim aims hope hopes want wants target targets intend intends")
# words of the negation list that report an event rather than deny one
NOT_DENIALS = wordset("without failed unable")
UNIVERSAL = wordset("every all each entire whole")
PART = wordset("other remaining rest some most several few many part")
# "the only site", "a single site": a count of one, which "one" alone (a pronoun as often as
# not) is not
ONE = (("the", "only"), ("only", "one"), ("a", "single"), ("just", "one"), ("the", "sole"))
# words that say nothing about which thing a clause is about
VAGUE = wordset(
    "still now already actually also overall however instead itself themselves even just "
    "year years time last new first total number level lot way part thing things further "
    "slightly sharply largely mostly mainly nearly roughly about")
PLACED = wordset("finished finishing finish finishes placed came ranked ended")
ORDINAL_ORDER = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
                 "ninth", "tenth", "eleventh", "twelfth")
ORDINALS = frozenset(ORDINAL_ORDER)
# bounds that compare with what follows them: "above the legal limit", "within the forecast"
ABOVE = wordset("above beyond exceeding exceeds exceeded")
BELOW = wordset("below within")
# states that exclude each other, said of one subject: (group, one side, the other side); the
# words of a phrase are joined by "_"
POLAR = (
    ("continue", "continue continues continued continuing stay stays stayed staying join joins "
                 "joined rejoin", "leave leaves leaving quit quits withdraw withdraws withdrew "
                 "withdrawn exit exits"),
    ("open", "open opens opened reopen reopens reopened", "close closes closed closing shut "
                                                          "shuts"),
    ("pass", "pass passes passed", "fail fails failed"),
    ("start", "start starts started begin begins began begun resume resumes resumed launch "
              "launches launched", "stop stops stopped halted cancel cancels "
              "cancelled canceled scrap scraps scrapped abandon abandoned shelve shelved "
              "suspend suspended"),
    ("outcome", "upheld uphold upholds accepted accept accepts approved approve approves "
                "granted grant grants allowed awarded succeeded", "dismissed dismiss dismisses "
                "rejected reject rejects refused refuse refuses denied"),
    # a decision still in force, or undone: said of the decision, before or after the verb
    ("force", "stands still_stands in_force", "overturned overturning overturns overturn "
              "quashed quashing set_aside reversed reversing lifted revoked"),
    ("include", "include includes included", "exclude excludes excluded omitted omit"),
    ("support", "support supports supported favour favours favoured favor favors favored "
                "in_favour in_favor", "oppose opposes opposed against_it"),
    ("verdict", "convicted guilty", "acquitted cleared"),
    ("schedule", "on_time on_schedule on_course on_track ahead_of_schedule",
                 "delayed late behind_schedule postponed"),
    # the first ever, or back again
    ("new", "first_time_in first_time_ever first_ever never_before",
            "return returns returned returning reinstated reintroduced"),
)
POLAR_WORDS = {tuple(phrase.split("_")): (group, sign)
                for group, yes, no in POLAR
                for sign, side in (("+", yes), ("-", no))
                for phrase in side.split()}
BOTH_SIDES = {"force"}   # groups whose subject may follow the verb ("overturning the refusal")
# whether a thing ever existed before does not depend on when it is said: "trains return" and
# "will have trains for the first time" conflict in any tense
TIMELESS = {"new"}
# "trains will stop there": a call at a place, not an end
STOP_AT = wordset("at there here in outside near")
