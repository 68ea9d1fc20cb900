"""Word lists for the synthetic corpus's sentence generator (orthoasr.data.sentences).

Written for this project. Lists hold base forms; plurals and verb forms are derived by the
rules in sentences.py, with the irregular forms listed here. Everything is lower case.
"""

from __future__ import annotations


def _words(text: str) -> tuple[str, ...]:
    """Whitespace-separated words, first occurrence order, duplicates dropped."""
    return tuple(dict.fromkeys(text.split()))


# ------------------------------------------------------------------------- people

PROFESSIONS = _words("""
teacher doctor nurse farmer baker butcher carpenter plumber painter sailor soldier pilot
driver lawyer judge banker clerk cashier waiter waitress cook gardener mechanic engineer
architect scientist chemist biologist physicist astronomer surgeon dentist pharmacist
vet librarian journalist reporter editor writer poet novelist singer dancer drummer
pianist violinist guitarist actor actress director producer photographer designer tailor
shoemaker jeweler potter weaver blacksmith miner fisherman hunter shepherd ranger guard
officer detective inspector sergeant captain major general admiral mayor senator governor
minister president king queen prince princess duke knight servant maid butler porter
janitor cleaner plumber electrician builder bricklayer roofer surveyor accountant
economist manager director secretary receptionist assistant intern student professor
lecturer tutor coach referee athlete runner swimmer climber cyclist boxer wrestler skater
skier goalkeeper player champion captain musician composer conductor sculptor artist
historian philosopher mathematician programmer translator interpreter guide tourist
traveler explorer pioneer merchant trader shopkeeper grocer florist barber hairdresser
beautician model fireman policeman postman milkman salesman chairman spokesman
firefighter paramedic midwife therapist counselor psychologist priest monk nun bishop
pastor rabbi preacher volunteer neighbor stranger visitor guest host hostess landlord
tenant customer client patient passenger pedestrian witness prisoner thief burglar
smuggler pirate spy agent diplomat ambassador courier messenger lifeguard magician clown
juggler acrobat comedian announcer narrator critic collector inventor scholar
archivist auctioneer baker blacksmith bookkeeper brewer cartographer chauffeur
choreographer clockmaker cobbler confectioner curator decorator dietitian
dockworker falconer fishmonger forester glazier goldsmith harpist housekeeper
illustrator jockey locksmith lumberjack machinist mason navigator optician
paperboy pharmacist physician plasterer puppeteer ranger saddler seamstress
silversmith stonemason stuntman swimmer tanner tiler toymaker upholsterer usher
watchmaker welder winemaker zookeeper beekeeper gamekeeper innkeeper
""")

RELATIVES = _words("""
mother father sister brother aunt uncle cousin niece nephew grandmother grandfather
grandson granddaughter daughter son wife husband friend roommate partner boss colleague
classmate teammate landlady godmother godfather stepmother stepfather fiancee twin
""")

PEOPLE_GENERIC = _words("""
man woman child boy girl baby lady gentleman person teenager toddler kid youngster
adult elder couple family crowd audience team committee jury council group class
""")

FIRST_NAMES = _words("""
james john robert michael william david richard joseph thomas charles christopher daniel
matthew anthony mark donald steven paul andrew joshua kenneth kevin brian george timothy
ronald edward jason jeffrey ryan jacob gary nicholas eric jonathan stephen larry justin
scott brandon benjamin samuel gregory alexander frank patrick raymond jack dennis jerry
tyler aaron jose adam nathan henry douglas zachary peter kyle ethan walter noah jeremy
christian keith roger terry gerald harold sean austin carl arthur lawrence dylan jesse
jordan bryan billy joe bruce gabriel logan albert willie alan juan wayne elijah randy roy
vincent ralph eugene russell bobby mason philip louis harry oliver leo oscar hugo felix
victor simon martin julian theodore arthur rupert duncan angus callum fergus hamish
mary patricia jennifer linda elizabeth barbara susan jessica sarah karen lisa nancy betty
margaret sandra ashley kimberly emily donna michelle carol amanda dorothy melissa deborah
stephanie rebecca sharon laura cynthia kathleen amy angela shirley anna brenda pamela emma
nicole helen samantha katherine christine debra rachel carolyn janet catherine maria heather
diane ruth julie olivia joyce virginia victoria kelly lauren christina joan evelyn judith
megan andrea cheryl hannah jacqueline martha gloria teresa ann sara madison frances kathryn
janice jean abigail alice judy sophia grace denise amber doris marilyn danielle beverly
isabella theresa diana natalie brittany charlotte marie kayla alexis lori clara lucy
eleanor hazel iris ivy rose violet daisy florence edith agnes mabel harriet beatrice
matilda penelope rosalind imogen fiona eileen bridget maeve sinead siobhan niamh aoife
aiden blake caleb declan elliot finn gideon jasper lachlan milo nolan quentin rowan
silas tobias wesley xavier zane barnaby clement desmond ernest fabian gilbert horace
ignatius jerome lionel mortimer nigel percival reginald sebastian thaddeus ulysses
vernon wilfred ada beatrix cecilia delphine esme fern gwendolyn hermione ingrid
juniper kerensa lavinia maude nell ophelia philippa rosamund sybil tabitha ursula
vivienne winifred yvonne zelda adele bonnie coral dolores elsie freya greta honor
isla june kitty lottie mavis nora orla petra queenie ramona stella thea una vera wren
""")

SURNAMES = _words("""
smith johnson williams brown jones miller davis wilson anderson taylor thomas moore
jackson martin thompson white harris clark lewis robinson walker young allen king wright
scott hill green adams baker nelson carter mitchell roberts turner phillips campbell
parker evans edwards collins stewart morris murphy cook rogers morgan cooper peterson
bailey reed kelly howard cox ward richardson watson brooks wood james bennett gray hughes
price sanders myers long ross foster powell jenkins perry russell sullivan bell coleman
butler henderson barnes fisher vasquez simmons graham marshall owens harrison gibson
wallace ellis stevens tucker porter hunter hicks crawford henry boyd mason warren dixon
burns gordon shaw holmes rice robertson hunt black daniels palmer mills nichols grant
knight ferguson stone hawkins dunn perkins hudson spencer stephens pierce hansen weaver
larson watkins olson carroll duncan snyder hart cunningham bradley lane andrews ruiz
harper fox riley armstrong carpenter greene lawrence elliott chavez sims austin peters
kelley franklin lawson fields ryan schmidt carr castillo wheeler chapman oliver
montgomery richards williamson johnston banks meyer bishop mccoy howell morrison hansen
fletcher lynch douglas macdonald mackenzie fraser murray mcleod reid paterson kerr
abbott ainsworth ashby atkinson bamford barlow bates baxter blackwood booth bowen
bradshaw brennan bryant burgess burton chambers chandler cheng clayton cole conway
crane cross dalton dawson dean doyle drake dudley dyer eaton farrell finch fleming
flynn ford frost fuller garner gibbs gilbert goodwin gough hale hammond hancock
hardy harding hartley hayes heath hobbs holland holt hood hopkins horton houghton
hurst jarvis kemp kendall kirby lambert lamb lang lee lloyd lowe lucas lyons marsh
mathews mercer middleton moss nash newman newton norris north oakley osborne page
parsons payne pearce pratt preston quinn ramsey rhodes rowe savage sharp shepherd
""")

# ------------------------------------------------------------------------- places

CITIES = _words("""
london paris berlin madrid rome vienna prague warsaw dublin edinburgh glasgow cardiff
belfast manchester liverpool birmingham leeds bristol oxford cambridge york bath brighton
boston chicago denver seattle portland houston dallas austin phoenix atlanta miami
orlando nashville memphis detroit cleveland pittsburgh baltimore philadelphia toronto
montreal vancouver ottawa calgary sydney melbourne brisbane perth adelaide auckland
wellington tokyo osaka kyoto seoul beijing shanghai singapore bangkok mumbai delhi
cairo nairobi lagos accra casablanca lisbon porto barcelona seville valencia milan naples
venice florence munich hamburg cologne frankfurt zurich geneva amsterdam rotterdam brussels
antwerp copenhagen stockholm oslo helsinki reykjavik athens istanbul budapest bucharest
sofia belgrade zagreb krakow riga tallinn vilnius kiev moscow havana lima bogota santiago
quito caracas montevideo rio chester durham lancaster norwich exeter plymouth inverness
aberdeen dundee galway cork limerick
bergen gothenburg malmo aarhus tampere turku gdansk poznan wroclaw brno bratislava
ljubljana salzburg innsbruck graz basel bern lausanne lyon marseille bordeaux toulouse
nantes lille nice strasbourg bilbao granada malaga cordoba bologna genoa turin verona
pisa siena palermo salonica heraklion split dubrovnik tbilisi yerevan baku tashkent
almaty kathmandu dhaka colombo karachi lahore kabul tehran baghdad beirut amman
jerusalem riyadh doha dubai muscat khartoum addis tunis algiers dakar abuja kampala
kigali lusaka harare durban johannesburg windhoek antananarivo hobart darwin cairns
""")

COUNTRIES = _words("""
france germany spain italy portugal ireland scotland wales england canada mexico brazil
argentina chile peru colombia japan china india egypt kenya nigeria ghana morocco greece
turkey poland austria hungary sweden norway finland denmark iceland russia ukraine
australia jamaica cuba switzerland belgium holland romania bulgaria croatia serbia
""")

BUILDINGS = _words("""
house school library museum hospital church chapel cathedral castle palace tower bridge
station airport harbor market bakery pharmacy bank office factory warehouse theater cinema
restaurant cafe hotel inn cottage cabin barn stable garage shed workshop studio gallery
stadium gym arena prison courthouse embassy university college laboratory observatory
lighthouse mill brewery farmhouse mansion apartment hostel motel temple monastery abbey
fortress supermarket bookshop boutique salon clinic kindergarten nursery playground park
garden zoo aquarium circus fairground harbor dock pier quay marina terminal depot
""")

ROOMS = _words("""
kitchen bedroom bathroom attic basement cellar hallway corridor lobby lounge study
classroom office pantry closet balcony porch terrace courtyard dining ballroom
""")

NATURE_PLACES = _words("""
forest river lake mountain hill valley meadow field desert beach island ocean sea bay
cliff cave canyon glacier volcano swamp marsh jungle prairie orchard vineyard pond stream
creek waterfall spring shore coast harbor lagoon reef plain plateau ridge peak slope
woodland grove thicket hedge path trail road lane street avenue square village town
city suburb countryside farm ranch estate
""")

# ------------------------------------------------------------------------- things

ANIMALS = _words("""
dog cat horse cow pig sheep goat chicken duck goose turkey rabbit hamster mouse rat
squirrel fox wolf bear deer moose elk lion tiger leopard cheetah jaguar panther elephant
giraffe zebra hippo rhino camel llama kangaroo koala panda monkey gorilla chimpanzee
baboon bat owl eagle hawk falcon crow raven sparrow robin pigeon parrot peacock swan
pelican penguin flamingo heron stork seagull puffin dolphin whale shark seal walrus otter
beaver badger hedgehog mole weasel ferret raccoon skunk frog toad lizard snake turtle
tortoise crocodile alligator salmon trout cod tuna octopus squid crab lobster shrimp
jellyfish starfish snail spider ant bee wasp butterfly moth beetle ladybird dragonfly
grasshopper cricket mosquito donkey mule pony lamb calf puppy kitten bull ox buffalo bison
hare stoat vole shrew lynx bobcat cougar hyena jackal meerkat mongoose lemur sloth
armadillo anteater aardvark porcupine chipmunk gopher marmot wombat platypus emu
ostrich kiwi vulture condor albatross kingfisher woodpecker hummingbird nightingale
magpie jay starling finch wren thrush blackbird lark swallow cuckoo partridge pheasant
quail canary budgie cockatoo toucan iguana gecko chameleon newt salamander tadpole
eel herring mackerel sardine haddock halibut carp pike stingray seahorse oyster clam
mussel scallop worm caterpillar centipede scorpion termite flea tick firefly
""")

FOODS = _words("""
apple banana orange lemon lime grape cherry peach pear plum apricot mango pineapple melon
strawberry raspberry blueberry kiwi coconut avocado tomato potato carrot onion cabbage
lettuce cucumber pepper pumpkin turnip radish beet mushroom leek bean pea egg sandwich
biscuit cookie cake pie tart muffin pancake waffle bagel croissant roll loaf pizza burger
sausage pastry dumpling omelet salad sauce soup stew curry noodle pickle olive walnut
almond peanut chestnut hazelnut raisin lemonade doughnut pretzel cracker cupcake
grapefruit tangerine clementine nectarine fig date pomegranate papaya guava lychee
cranberry gooseberry blackberry currant rhubarb parsnip courgette zucchini aubergine
eggplant artichoke asparagus sprout cauliflower kale shallot chili jalapeno cashew
pistachio pecan macaroon meringue scone crumpet brownie flapjack sponge trifle pudding
custard tortilla taco burrito kebab samosa pancake fritter meatball cutlet drumstick
""")

MASS_FOODS = _words("""
bread butter cheese milk cream yogurt honey jam rice pasta flour sugar salt pepper
chocolate coffee tea juice water soup porridge cereal bacon ham chicken beef pork lamb
fish toast garlic ginger cinnamon vanilla spinach broccoli celery corn oatmeal
""")

OBJECTS = _words("""
book pen pencil notebook letter envelope stamp parcel package box basket bag suitcase
backpack wallet purse coin key lock chain rope string ribbon thread needle button zipper
umbrella hat cap scarf glove sock shoe boot jacket coat sweater shirt dress skirt belt tie
watch ring necklace bracelet earring brooch mirror comb brush towel blanket pillow sheet
curtain carpet rug lamp candle lantern torch bulb battery clock calendar map globe
compass telescope microscope camera radio television computer laptop keyboard screen
printer phone tablet speaker headphone cable plug switch socket hammer nail screw
screwdriver wrench saw drill axe shovel spade rake hoe bucket ladder broom mop sponge
bottle jar cup mug glass plate bowl dish spoon fork knife pan pot kettle teapot jug tray
basin sink bathtub shower toilet tap pipe hose fence gate door window wall roof floor
ceiling chimney staircase step shelf cupboard drawer wardrobe cabinet desk table chair
stool bench sofa couch bed cradle crib mattress painting picture photograph poster frame
sculpture statue vase flowerpot trophy medal flag banner sign ticket receipt card
postcard magazine newspaper journal diary novel dictionary atlas manual brochure
leaflet folder file document report contract passport license certificate diploma
guitar piano violin cello flute trumpet drum harp clarinet trombone saxophone harmonica
ball bat racket kite doll puzzle toy game balloon whistle bell horn candle match lighter
wheel tire engine motor gear lever pump valve tank barrel crate sack tent hammock cushion
quilt apron uniform costume mask helmet shield sword arrow spear cannon
anchor oar sail mast net hook rod cage collar leash saddle harness bucket bin shelf
paintbrush canvas easel palette chalk crayon marker eraser ruler stapler scissors
envelope tape glue ink paper cardboard sticker label tag badge pin coin banknote
stapler calculator thermometer barometer binoculars magnifier tweezers pliers chisel
trowel wheelbarrow sprinkler lawnmower padlock doorbell doormat
doorknob keyhole hinge bolt spring coil funnel sieve colander grater whisk ladle spatula
teaspoon tablespoon saucer tumbler goblet flask thermos lunchbox cooler icebox
fridge freezer oven stove toaster blender microwave dishwasher kettle skillet casserole
cauldron cookbook recipe napkin tablecloth placemat coaster candlestick chandelier
lampshade radiator heater fan thermostat extinguisher alarm detector fuse
wardrobe hanger shoelace slipper sandal sneaker trainer overcoat raincoat waistcoat
cardigan blouse jumper vest pajamas nightgown bathrobe swimsuit bikini tuxedo gown
bonnet beret turban headscarf mitten earmuff handkerchief bandana pendant locket
anklet tiara crown scepter throne goblet chalice cushion footstool armchair rocking
bookcase bookmark paperback hardback encyclopedia almanac anthology scrapbook sketchbook
notepad clipboard briefcase satchel rucksack duffel trunk chest casket coffin urn
jigsaw rattle marble skittle yoyo frisbee skateboard surfboard snowboard paddle
racquet shuttlecock dartboard dart trampoline swing seesaw slide sandbox bucket
telescope periscope kaleidoscope hourglass sundial metronome fork gramophone
typewriter projector microphone amplifier loudspeaker antenna satellite dish router
modem charger adapter joystick controller console cartridge cassette record disc
""")

FURNITURE = _words("""
table desk shelf bench chair counter windowsill mantelpiece cupboard dresser sofa bed
stool cabinet trolley cart tray
""")

VEHICLES = _words("""
car bus train tram truck van taxi bicycle motorcycle scooter boat ship ferry yacht canoe
kayak raft submarine plane helicopter jet rocket balloon tractor lorry wagon carriage
sled sledge caravan ambulance limousine minibus coach barge tugboat
""")

MATERIALS = _words("""
wood glass steel iron copper silver gold brass tin aluminum plastic rubber leather cotton
wool silk linen velvet paper cardboard stone marble granite clay concrete brick sand
""")

TOPICS = _words("""
history music art science math geography biology chemistry physics literature poetry
philosophy politics economics religion law medicine engineering architecture astronomy
language grammar spelling painting sculpture photography cooking gardening farming
fishing sailing climbing swimming football tennis golf cricket chess cards weather climate
travel trade money business finance health fitness nutrition education theater dance
opera cinema television radio journalism fashion design technology electricity energy
transport traffic pollution recycling agriculture forestry geology ecology evolution
genetics psychology sociology anthropology archaeology mythology folklore democracy
justice freedom peace war friendship marriage childhood memory imagination curiosity
patience kindness courage honesty loyalty ambition success failure luck fortune danger
safety silence noise beauty truth knowledge wisdom
""")

ABSTRACT = _words("""
idea plan problem question answer story reason result decision choice mistake chance
secret rumor promise warning message rule theory method system project program budget
schedule deadline goal dream wish hope fear doubt opinion argument debate discussion
conversation lesson lecture speech interview survey experiment discovery invention
solution puzzle riddle joke song poem essay article chapter paragraph sentence word
letter proposal agreement treaty law policy strategy tradition custom habit hobby
adventure journey trip voyage holiday vacation festival ceremony celebration party
""")

EVENTS = _words("""
wedding funeral birthday party concert festival parade meeting conference lecture class
lesson game match race tournament competition election ceremony auction exhibition fair
market show play performance rehearsal interview dinner lunch breakfast picnic barbecue
holiday trip journey storm flood fire accident strike protest celebration reunion
""")

WEATHER = _words("""
rain snow wind storm thunder lightning fog mist hail frost sunshine drizzle sleet
""")

COLORS = _words("""
red blue green yellow orange purple pink brown black white gray silver golden violet
crimson scarlet maroon navy turquoise beige ivory amber emerald olive lavender
""")

PLANTS = _words("""
oak maple birch willow pine spruce fir cedar elm ash beech chestnut poplar sycamore
yew holly ivy hawthorn rowan hazel magnolia cherry apple palm cactus fern moss reed
bamboo rose tulip daisy lily orchid sunflower daffodil violet poppy lavender iris
bluebell buttercup dandelion clover thistle nettle heather marigold carnation peony
geranium jasmine honeysuckle lilac hyacinth snowdrop crocus primrose foxglove
orchid begonia petunia pansy dahlia azalea camellia hibiscus lotus waterlily vine
""")

# ------------------------------------------------------------------------- modifiers

# Adjectives for things and places (size, shape, state, material, look, taste).
THING_ADJECTIVES = _words("""
big small large tiny huge enormous little tall short long wide narrow thick thin deep
shallow heavy light old new ancient modern fresh stale clean dirty dusty muddy wet
dry warm cold hot cool soft hard smooth rough sharp blunt bright dark pale shiny dull
empty full broken cracked bent torn folded wrinkled polished painted wooden metal plastic
woolen leather golden round square flat curved straight crooked tidy messy neat plain
fancy simple strange unusual ordinary common rare precious expensive cheap valuable
useful handy sturdy fragile delicate solid hollow sticky slippery fluffy furry hairy
smelly fragrant beautiful pretty ugly lovely elegant famous unknown familiar foreign
local distant nearby hidden secret private public open closed locked crowded quiet
noisy peaceful striped spotted checked colorful glowing sparkling gleaming rusty mossy
grassy sandy rocky stony snowy icy foggy misty rainy windy sunny cloudy frosty humid
medieval royal rural urban coastal northern southern eastern western central tropical
arctic iron copper marble velvet silken enormous miniature gigantic massive slender
spacious cramped cozy chilly damp soggy greasy oily rubbery crisp crunchy chewy
juicy creamy sugary buttery bitter sweet sour salty spicy tasty delicious ripe rotten
raw cooked frozen boiled fried baked roasted grilled sliced toasted smoked pickled
shabby scruffy spotless gleaming faded battered dented scratched chipped stained
patched mended secondhand handmade homemade antique vintage sleek bulky compact
portable waterproof fireproof transparent opaque glossy matte velvety woven knitted
embroidered carved engraved gilded jeweled feathered leafy thorny hairless curly wavy
""")

# Adjectives for people and animals (character, mood, condition).
PERSON_ADJECTIVES = _words("""
young old tall short clever wise foolish brave cowardly honest proud humble shy bold
curious nervous anxious worried relaxed happy sad angry cheerful gloomy grumpy jolly
merry sleepy tired exhausted hungry thirsty sick healthy strong weak rich poor lucky
unlucky famous generous greedy patient impatient polite rude careful careless serious
funny silly strict lazy busy eager keen jealous grateful surprised amazed confused
puzzled frightened scared excited bored delighted pleased upset lonely hopeful
thoughtful cautious stubborn loyal faithful modest gifted talented skilled experienced
friendly hostile kind cruel gentle fierce wild tame calm noisy quiet clumsy graceful
charming handsome elegant cheerful fearless reckless sensible sensitive confident
ambitious cunning sly mischievous playful restless tireless cheeky chatty
talkative cheerless courteous considerate cooperative diligent dependable energetic
enthusiastic forgetful frank friendly gracious hardworking hospitable imaginative
independent inquisitive jovial meticulous observant optimistic pessimistic punctual
quarrelsome resourceful sarcastic sincere sociable sympathetic timid tolerant
trustworthy unreliable vain witty zealous weary drowsy feverish starving soaked
""")

# Adjectives for events, ideas and topics (judgement).
EVAL_ADJECTIVES = _words("""
important urgent difficult easy simple complex complicated obvious clear vague accurate
exact correct wrong true false real fake natural artificial interesting boring exciting
wonderful terrible awful excellent brilliant splendid marvelous dreadful pleasant
unpleasant successful unsuccessful useful useless surprising shocking predictable
remarkable ordinary unusual strange familiar popular unpopular controversial modern
traditional ancient original practical sensible reasonable ridiculous absurd clever
elegant memorable forgettable inspiring disappointing impressive modest generous
expensive costly profitable risky dangerous safe secret private public official formal
informal serious lively dull tedious thrilling delightful charming peculiar curious
mysterious puzzling confusing convincing doubtful promising hopeless harmless harmful
""")

ADJECTIVES = tuple(dict.fromkeys(THING_ADJECTIVES + PERSON_ADJECTIVES + EVAL_ADJECTIVES))

# Short adjectives with comparative and superlative forms by the rules in sentences.py.
GRADABLE_ADJECTIVES = _words("""
big small large tall short long wide thick thin deep heavy light old new young fresh
clean dirty dusty wet dry warm cold hot cool soft hard smooth rough sharp bright dark pale
loud quiet fast slow quick strong weak rich poor happy sad angry busy lazy brave kind
cruel wise tiny huge neat plain strange rare cheap safe calm wild tame gentle simple
noisy lucky funny silly sleepy hungry thirsty healthy pretty ugly lovely easy early late
heavy shiny dull fierce proud humble bold sweet sour salty tasty crisp ripe late
""")

ADVERBS = _words("""
quickly slowly quietly loudly carefully carelessly happily sadly angrily gently softly
suddenly finally eventually immediately quietly patiently eagerly nervously calmly
bravely proudly politely rudely honestly secretly openly clearly easily hardly nearly
almost always never often sometimes rarely seldom usually already soon later early late
today tonight yesterday tomorrow together alone outside inside upstairs downstairs
abroad everywhere somewhere nowhere anywhere again once twice badly well warmly
kindly firmly tightly loosely neatly gladly silently swiftly steadily briefly barely
cheerfully gracefully clumsily lazily busily hungrily sleepily noisily angrily
thoughtfully carefully awkwardly bitterly boldly brightly cautiously cheaply closely
correctly deeply doubtfully dramatically elegantly equally exactly fairly faithfully
fiercely foolishly frankly freely generously gladly gratefully greedily hastily
heavily helpfully honestly hopefully innocently jealously joyfully lightly loyally
madly merrily mysteriously naturally neatly obediently playfully poorly promptly
properly quietly rapidly readily recklessly regularly repeatedly roughly sharply
shyly sincerely smoothly solemnly speedily sternly strictly successfully sweetly
tenderly thankfully truly vaguely warmly wearily wildly wisely
""")

FREQUENCY = _words("""always usually often sometimes rarely never seldom""")

MONTHS = _words("""
january february march april may june july august september october november december
""")

DAYS = _words("""monday tuesday wednesday thursday friday saturday sunday""")

SEASONS = _words("""spring summer autumn winter""")

TIMES_OF_DAY = _words("""morning afternoon evening night midnight noon dawn dusk""")

NUMBERS = _words("""
two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety
hundred
""")

# ------------------------------------------------------------------------- verbs

# Verbs that take a concrete object: "<person> <verb> the <object>".
VERBS_OBJECT = _words("""
carry lift move push pull drop hold throw catch kick fold wrap pack unpack open close
lock unlock fix repair mend break build paint draw clean wash wipe dry polish scrub sweep
dust sort count measure weigh check inspect examine test borrow lend buy sell order
deliver send post return collect gather find lose hide keep store fetch bring take
steal share offer hand give show cover uncover fill empty load unload tie untie hang
press shake turn twist bend stretch cut slice chop trim sharpen light burn melt freeze
heat cool boil carve sew knit weave stitch glue tape pin nail screw plant water grow pick
drag roll spin stack arrange label mark sign stamp scan copy print photograph film
replace remove install adjust test decorate design sketch admire notice spot recognize
ignore forget remember want need like love hate prefer choose reject accept receive
steady balance hammer mop rinse soak peel grate grind mix stir pour spill spread sprinkle
toss flip grab drop catch snatch squeeze stroke scratch rub tap touch wave point pick
polish varnish sand plaster glaze dye bleach iron starch press steam launder dust
hoover vacuum tidy organize rearrange assemble dismantle unscrew bolt weld solder
rewire recharge unplug switch reset program update download upload delete save
restore rescue rebuild restore preserve protect guard shelter support lean prop
hoist haul tow drag shove nudge jiggle rattle wobble tilt flip swap trade barter
auction donate deliver mail bundle seal fasten buckle
button zip lace knot braid unravel untangle coil uncoil sharpen hone file grind
sketch trace outline shade color frame hang mount display exhibit sell gift
""")

# Verbs that take food.
VERBS_FOOD = _words("""
eat cook bake fry boil roast grill taste slice chop peel serve buy share order smell
toast wash chew swallow pack freeze prepare finish sample
""")

# Verbs that take an animal.
VERBS_ANIMAL = _words("""
feed chase follow watch photograph rescue catch train brush wash stroke pat groom walk
ride tame frighten scare startle spot hear track count study draw adopt
""")

# Verbs that take a topic or abstract noun.
VERBS_TOPIC = _words("""
study discuss explain teach learn describe explore research question review analyze
understand mention ignore debate summarize present publish discover consider imagine
remember forget notice admire criticize defend support oppose announce report suggest
propose reject accept change improve simplify test solve complete finish start begin
investigate evaluate assess compare contrast illustrate demonstrate clarify justify
challenge revise translate interpret memorize outline predict calculate estimate
document record measure verify confirm doubt dispute celebrate honor rediscover
""")

# Verbs that take no object.
VERBS_INTRANSITIVE = _words("""
arrive leave laugh smile cry shout whisper sing dance jump run walk hurry wait rest sleep
wake sit stand kneel lie fall climb swim dive float sink fly travel wander stroll march
cough sneeze yawn sigh nod frown blink shiver tremble sweat breathe listen speak talk
argue agree complain apologize pray vote cheer clap whistle hum work play read write
study cook bake paint draw knit relax retire return disappear appear vanish hesitate
panic worry succeed fail win lose compete train practice exercise stretch jog hike skate
ski surf sail row paddle celebrate gossip chat giggle grin shrug wink wave bow
blush chuckle cackle croon crawl creep dash dart dawdle doze drift drown faint fidget
flinch frolic gallop gasp glide gossip grumble gulp hiccup hobble hop hover howl
leap limp linger loiter lounge meander mumble mutter nap pant pause pace
plod pounce prance quiver ramble roam roar sashay saunter scamper scramble scurry
shuffle skip slouch slumber snore sob sprint squeal squirm stagger stammer stomp
stumble stutter swagger sway swoop tiptoe toddle totter trot trudge twirl waddle
weep wheeze whimper wobble yell zigzag
""")

# Forms that do not follow the rules in sentences.py: base -> (past, past participle).
IRREGULAR_VERBS = {
    "arise": ("arose", "arisen"), "be": ("was", "been"), "bear": ("bore", "borne"),
    "beat": ("beat", "beaten"), "become": ("became", "become"), "begin": ("began", "begun"),
    "bend": ("bent", "bent"), "bite": ("bit", "bitten"), "blow": ("blew", "blown"),
    "break": ("broke", "broken"), "bring": ("brought", "brought"),
    "build": ("built", "built"), "burn": ("burned", "burned"), "buy": ("bought", "bought"),
    "catch": ("caught", "caught"), "choose": ("chose", "chosen"), "come": ("came", "come"),
    "cut": ("cut", "cut"), "dig": ("dug", "dug"), "dive": ("dove", "dived"),
    "do": ("did", "done"), "draw": ("drew", "drawn"), "drink": ("drank", "drunk"),
    "drive": ("drove", "driven"), "eat": ("ate", "eaten"), "fall": ("fell", "fallen"),
    "feed": ("fed", "fed"), "feel": ("felt", "felt"), "fight": ("fought", "fought"),
    "find": ("found", "found"), "fly": ("flew", "flown"), "forget": ("forgot", "forgotten"),
    "freeze": ("froze", "frozen"), "get": ("got", "gotten"), "give": ("gave", "given"),
    "go": ("went", "gone"), "grind": ("ground", "ground"), "grow": ("grew", "grown"),
    "hang": ("hung", "hung"), "have": ("had", "had"), "hear": ("heard", "heard"),
    "hide": ("hid", "hidden"), "hold": ("held", "held"), "keep": ("kept", "kept"),
    "kneel": ("knelt", "knelt"), "know": ("knew", "known"), "lay": ("laid", "laid"),
    "lead": ("led", "led"), "learn": ("learned", "learned"), "leave": ("left", "left"),
    "lend": ("lent", "lent"), "lie": ("lay", "lain"), "light": ("lit", "lit"),
    "lose": ("lost", "lost"), "make": ("made", "made"), "mean": ("meant", "meant"),
    "meet": ("met", "met"), "pay": ("paid", "paid"), "put": ("put", "put"),
    "read": ("read", "read"), "ride": ("rode", "ridden"), "ring": ("rang", "rung"),
    "rise": ("rose", "risen"), "run": ("ran", "run"), "say": ("said", "said"),
    "see": ("saw", "seen"), "sell": ("sold", "sold"), "send": ("sent", "sent"),
    "sew": ("sewed", "sewn"), "shake": ("shook", "shaken"), "shine": ("shone", "shone"),
    "shoot": ("shot", "shot"), "show": ("showed", "shown"), "shut": ("shut", "shut"),
    "sing": ("sang", "sung"), "sink": ("sank", "sunk"), "sit": ("sat", "sat"),
    "sleep": ("slept", "slept"), "slide": ("slid", "slid"), "speak": ("spoke", "spoken"),
    "spend": ("spent", "spent"), "spill": ("spilled", "spilled"), "spin": ("spun", "spun"),
    "spread": ("spread", "spread"), "stand": ("stood", "stood"),
    "steal": ("stole", "stolen"), "stick": ("stuck", "stuck"), "sting": ("stung", "stung"),
    "strike": ("struck", "struck"), "sweep": ("swept", "swept"), "swim": ("swam", "swum"),
    "swing": ("swung", "swung"), "take": ("took", "taken"), "teach": ("taught", "taught"),
    "tear": ("tore", "torn"), "tell": ("told", "told"), "think": ("thought", "thought"),
    "throw": ("threw", "thrown"), "understand": ("understood", "understood"),
    "wake": ("woke", "woken"), "wear": ("wore", "worn"), "weave": ("wove", "woven"),
    "win": ("won", "won"), "wind": ("wound", "wound"), "write": ("wrote", "written"),
    "creep": ("crept", "crept"), "weep": ("wept", "wept"), "rebuild": ("rebuilt", "rebuilt"),
    "reset": ("reset", "reset"), "spit": ("spat", "spat"), "set": ("set", "set"),
    "let": ("let", "let"), "upset": ("upset", "upset"),
}

# Verbs whose last consonant doubles before -ed and -ing (stop -> stopped, stopping).
DOUBLING_VERBS = frozenset(_words("""
stop drop plan grab rub hug tap wrap trim chop pat skip slip grip ship jog nod beg pin
scrub stir spot knit ban clap dip hum hop mop nap pet rob shop sip step tip tug zip admit
commit prefer refer regret permit control patrol occur omit equip chat grin wink stab
jam dab jot fit pad plug rig sag snap strap swap trip whip blot drag scan sob plod trot
knot prop unplug program zigzag shrug
"""))

# Nouns whose plural is not formed by the rules in sentences.py.
IRREGULAR_PLURALS = {
    "man": "men", "woman": "women", "child": "children", "person": "people",
    "mouse": "mice", "goose": "geese", "tooth": "teeth", "foot": "feet", "ox": "oxen",
    "sheep": "sheep", "deer": "deer", "fish": "fish", "moose": "moose", "bison": "bison",
    "salmon": "salmon", "trout": "trout", "cod": "cod", "squid": "squid",
    "shrimp": "shrimp", "buffalo": "buffaloes", "aircraft": "aircraft",
    "wolf": "wolves", "calf": "calves", "half": "halves", "knife": "knives",
    "life": "lives", "wife": "wives", "leaf": "leaves", "loaf": "loaves", "shelf": "shelves",
    "thief": "thieves", "scarf": "scarves", "elf": "elves", "self": "selves",
    "potato": "potatoes", "tomato": "tomatoes", "hero": "heroes", "echo": "echoes",
    "volcano": "volcanoes", "mosquito": "mosquitoes", "cactus": "cacti",
    "fireman": "firemen", "policeman": "policemen", "postman": "postmen",
    "milkman": "milkmen", "salesman": "salesmen", "chairman": "chairmen",
    "spokesman": "spokesmen", "fisherman": "fishermen", "gentleman": "gentlemen",
    "headphone": "headphones", "scissors": "scissors", "series": "series",
    "crisis": "crises", "analysis": "analyses", "thesis": "theses",
}

# Words that take "an" / "a" against the first-letter rule.
AN_EXCEPTIONS = frozenset(_words("hour honest honor heir hourly"))
A_EXCEPTIONS = frozenset(_words("""
one once unit union unique university uniform user useful useless usual european
eulogy ewe ufo utensil unicorn
"""))
