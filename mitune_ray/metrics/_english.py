"""Closed word lists for the rule-based noun-phrase chunker (`nounphrases.rule_noun_chunks`).

English function words, plus the open-class words T2I-CompBench's prompts use most (colours,
shapes, materials, frequent verbs) where form alone cannot tell a noun from an adjective or verb.
"""

NUMERALS = set(
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty thirty forty fifty hundred thousand dozen".split()
)
DETERMINERS = NUMERALS | set(
    "a an the this these those some any each every another both either neither no many several "
    "few much more most all its his their our my your whose other".split()
)
PERSONAL_PRONOUNS = set(
    "i you he she it we they me him us them itself themselves himself herself myself "
    "something someone somebody everything everyone anything nothing".split()
)
PREPOSITIONS = set(
    "about above across after against along alongside amid amidst among around as at atop before "
    "behind below beneath beside besides between beyond by despite down during except for from "
    "in inside into like near nearby next of off on onto opposite out outside over past per "
    "through throughout to toward towards under underneath unlike until up upon via with within "
    "without".split()
)
CONJUNCTIONS = set(
    "and or but nor while whilst whereas because so yet although though than if when where "
    "whether unless since".split()
)
AUXILIARIES = set(
    "is are was were be been being am 're 's has have had having do does did can could will "
    "would shall should may might must".split()
)
COPULAS = set("is are was were be been being am 're 's".split())
RELATIVES = set("which who whom what that how why".split())
ADVERBS = set(
    "not n't very too also here there together away almost quite just still even never always "
    "often now then back rather well soon alone apart instead ahead upstairs downstairs "
    "around everywhere somewhere".split()
)
BREAKS = PREPOSITIONS | CONJUNCTIONS | AUXILIARIES | RELATIVES | ADVERBS

# Adjectives that are (almost) never the head of a phrase.
PURE_ADJECTIVES = set(
    "red green blue yellow white black brown pink purple gray grey beige magenta cyan golden "
    "whitish reddish bluish greenish yellowish blackish brownish dark bright pale "
    "round rectangular triangular circular cubic spherical conical cylindrical pentagonal "
    "hexagonal octagonal pyramidal oblong tall short small big large huge tiny little long narrow "
    "wide thin thick fat flat giant fluffy metallic wooden woolen furry fuzzy soft hard smooth "
    "rough shiny glossy matte transparent sparkling striped spotted checkered colorful "
    "old new young ancient modern vintage empty full open clean dirty wet dry hot cold warm cool "
    "happy sad angry cute beautiful pretty ugly lovely elegant fancy sunny rainy snowy cloudy "
    "delicious fresh ripe sweet sour bitter same different various whole single "
    "double heavy light-colored bushy leafy sleek sturdy cozy luxurious famous stainless "
    "electric sharp crisp plump rich vibrant intricate delicate silky bumpy spiky crispy juicy "
    "sticky gentle tender calm distant rugged slimy prickly thorny fragrant translucent opaque "
    "dull deep earthy ornate grand romantic natural low high ready perfect plush fiery serene "
    "seasonal unique brilliant".split()
)
# Colour, shape and material words that are also nouns ("an orange", "a glass", "a square").
NOUN_ADJECTIVES = set(
    "orange gold silver tan cream peach plum navy coral salmon cherry lemon lime olive ivory "
    "violet turquoise maroon teal khaki bronze copper square oval diamond teardrop heart star "
    "plastic rubber leather "
    "glass fabric metal wood stone paper ceramic concrete marble steel iron brick velvet silk "
    "cotton wool denim".split()
)
ADJECTIVES = PURE_ADJECTIVES | NOUN_ADJECTIVES
# Finite verbs frequent in T2I prompts; only read as verbs right after a noun (see `_classify`).
FINITE_VERBS = set(
    "sit sits sat stands stood hold holds held feature features shine shines shone lie lies "
    "lay lays hang hangs hung lean leans perch perches grow grows grew overlook overlooks contain "
    "contains chase chases carry carries wear wears wore eat eats ate sing sings sang stir stirs "
    "stare stares gaze gazes fill fills make makes take takes give gives serve serves enjoy enjoys "
    "explore explores admire admires create creates build builds bake bakes pour pours sparkle "
    "sparkles glow glows dangle dangles sway sways rise rises rest rests provide provides "
    "illuminate illuminates attract attracts keep keeps decorate decorates jot jots nap naps "
    "read reads sped flew cast burst blew spun lit fell ran swam rode drew threw caught hid slid "
    "swung dove shook broke built dug stuck struck sank rose cut strode wove bit bent sent spread "
    "stole tore wept won hidden written taken given shown drawn thrown eaten fallen woven worn "
    "torn sewn grown".split()
)
# After a noun, a word followed by one of these is a verb: "the spoon and bowl mix the batter".
OBJECT_STARTS = set(
    "a an the this these those its his her their my your our some every down up out off "
    "away".split()
) | PERSONAL_PRONOUNS
# Nouns that merely look like "-ing" / "-ed" / "-ly" verb or adverb forms.
ING_NOUNS = set(
    "building painting ceiling clothing ring king string wing thing something nothing everything "
    "evening morning pudding icing stuffing railing flooring sibling awning sling swing spring "
    "sting earring wedding frosting dumpling bedding lightning sapling ding".split()
)
ED_NOUNS = set("bed shed sled seed reed weed bred flatbed sunbed hundred".split())
LY_NOUNS = set(
    "family fly lily belly jelly bully butterfly dragonfly firefly holly rally ally assembly "
    "supply reply italy july anomaly monopoly".split()
)
