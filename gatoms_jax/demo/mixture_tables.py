"""Entity tables of the generated task mixture (see mixture.py).

Facts here are checked by hand: capitals, chemical symbols and atomic numbers,
authors, painters, currencies, translations, plurals, antonyms, verb forms.
Entries are packed one `a|b|...` record per `;`/newline to keep the file short.
"""

from __future__ import annotations


def _table(text: str) -> tuple[tuple[str, ...], ...]:
  rows = []
  for line in text.replace('\n', ';').split(';'):
    if line.strip():
      rows.append(tuple(x.strip() for x in line.split('|')))
  return tuple(rows)


def _words(text: str) -> tuple[str, ...]:
  return tuple(
    w.strip() for w in text.replace('\n', ',').split(',') if w.strip()
  )


CAPITALS = _table("""
France|Paris; Germany|Berlin; Italy|Rome; Spain|Madrid; Portugal|Lisbon
Japan|Tokyo; China|Beijing; India|New Delhi; Canada|Ottawa; Australia|Canberra
Brazil|Brasília; Argentina|Buenos Aires; Mexico|Mexico City; Egypt|Cairo
Kenya|Nairobi; Russia|Moscow; Norway|Oslo; Sweden|Stockholm; Finland|Helsinki
Denmark|Copenhagen; Poland|Warsaw; Greece|Athens; Turkey|Ankara; Ireland|Dublin
Austria|Vienna; Hungary|Budapest; Belgium|Brussels; Peru|Lima; Chile|Santiago
Colombia|Bogotá; Thailand|Bangkok; Vietnam|Hanoi; South Korea|Seoul
Iran|Tehran; Iraq|Baghdad; Saudi Arabia|Riyadh; Morocco|Rabat; Nigeria|Abuja
Ghana|Accra; Ethiopia|Addis Ababa; Cuba|Havana; Iceland|Reykjavík
New Zealand|Wellington; Pakistan|Islamabad; Ukraine|Kyiv; Romania|Bucharest
Bulgaria|Sofia; Croatia|Zagreb; Serbia|Belgrade; Venezuela|Caracas
Uruguay|Montevideo; Jamaica|Kingston; Nepal|Kathmandu; Mongolia|Ulaanbaatar
Afghanistan|Kabul; Lebanon|Beirut; Jordan|Amman; Qatar|Doha; Senegal|Dakar
Zimbabwe|Harare; Uganda|Kampala; Malaysia|Kuala Lumpur; Switzerland|Bern
Slovakia|Bratislava; Slovenia|Ljubljana; Lithuania|Vilnius; Latvia|Riga
Estonia|Tallinn; Belarus|Minsk; Armenia|Yerevan; Kazakhstan|Astana
Algeria|Algiers; Tunisia|Tunis; Angola|Luanda; Zambia|Lusaka
Namibia|Windhoek; Botswana|Gaborone; Rwanda|Kigali; Cambodia|Phnom Penh
Laos|Vientiane; Bangladesh|Dhaka; Panama|Panama City; Costa Rica|San José
Ecuador|Quito; Paraguay|Asunción; Honduras|Tegucigalpa; Nicaragua|Managua
Malta|Valletta; Cyprus|Nicosia; Albania|Tirana; Guatemala|Guatemala City
""")

# name | symbol | atomic number
ELEMENTS = _table("""
hydrogen|H|1; helium|He|2; lithium|Li|3; beryllium|Be|4; boron|B|5
carbon|C|6; nitrogen|N|7; oxygen|O|8; fluorine|F|9; neon|Ne|10; sodium|Na|11
magnesium|Mg|12; aluminum|Al|13; silicon|Si|14; phosphorus|P|15; sulfur|S|16
chlorine|Cl|17; argon|Ar|18; potassium|K|19; calcium|Ca|20; titanium|Ti|22
chromium|Cr|24; manganese|Mn|25; iron|Fe|26; cobalt|Co|27; nickel|Ni|28
copper|Cu|29; zinc|Zn|30; bromine|Br|35; krypton|Kr|36; silver|Ag|47
tin|Sn|50; iodine|I|53; xenon|Xe|54; tungsten|W|74; platinum|Pt|78; gold|Au|79
mercury|Hg|80; lead|Pb|82; radon|Rn|86; uranium|U|92
""")

BOOKS = _table("""
Pride and Prejudice|Jane Austen; Emma|Jane Austen; 1984|George Orwell
Animal Farm|George Orwell; Moby-Dick|Herman Melville; Hamlet|William Shakespeare
Romeo and Juliet|William Shakespeare; Macbeth|William Shakespeare
War and Peace|Leo Tolstoy; Anna Karenina|Leo Tolstoy
Crime and Punishment|Fyodor Dostoevsky; The Great Gatsby|F. Scott Fitzgerald
To Kill a Mockingbird|Harper Lee; Frankenstein|Mary Shelley; Dracula|Bram Stoker
The Odyssey|Homer; Don Quixote|Miguel de Cervantes; Jane Eyre|Charlotte Brontë
Wuthering Heights|Emily Brontë; Great Expectations|Charles Dickens
Oliver Twist|Charles Dickens; A Tale of Two Cities|Charles Dickens
The Catcher in the Rye|J. D. Salinger; Brave New World|Aldous Huxley
The Hobbit|J. R. R. Tolkien; The Lord of the Rings|J. R. R. Tolkien
Ulysses|James Joyce; The Old Man and the Sea|Ernest Hemingway
Of Mice and Men|John Steinbeck; The Grapes of Wrath|John Steinbeck
Les Misérables|Victor Hugo; One Hundred Years of Solitude|Gabriel García Márquez
The Divine Comedy|Dante Alighieri; Alice's Adventures in Wonderland|Lewis Carroll
The Adventures of Tom Sawyer|Mark Twain; Fahrenheit 451|Ray Bradbury
The Metamorphosis|Franz Kafka; Madame Bovary|Gustave Flaubert
The Picture of Dorian Gray|Oscar Wilde; Little Women|Louisa May Alcott
Treasure Island|Robert Louis Stevenson; The Time Machine|H. G. Wells
The War of the Worlds|H. G. Wells; Gulliver's Travels|Jonathan Swift
Robinson Crusoe|Daniel Defoe; Mrs Dalloway|Virginia Woolf
""")

PAINTINGS = _table("""
the Mona Lisa|Leonardo da Vinci; The Last Supper|Leonardo da Vinci
The Starry Night|Vincent van Gogh; Sunflowers|Vincent van Gogh
Guernica|Pablo Picasso; The Persistence of Memory|Salvador Dalí
The Scream|Edvard Munch; The Birth of Venus|Sandro Botticelli
Girl with a Pearl Earring|Johannes Vermeer; The Night Watch|Rembrandt
Water Lilies|Claude Monet; The Kiss|Gustav Klimt
The Creation of Adam|Michelangelo; American Gothic|Grant Wood
""")

CURRENCIES = _table("""
Japan|yen; India|Indian rupee; Mexico|Mexican peso; Russia|ruble
Switzerland|Swiss franc; South Korea|won; Brazil|Brazilian real
Poland|złoty; Sweden|Swedish krona; Norway|Norwegian krone
Denmark|Danish krone; Turkey|Turkish lira; Thailand|baht; Vietnam|dong
China|renminbi (yuan); Canada|Canadian dollar; Australia|Australian dollar
Egypt|Egyptian pound; Hungary|forint; South Africa|rand
Argentina|Argentine peso; Nigeria|naira; Kenya|Kenyan shilling
Indonesia|rupiah; Malaysia|ringgit; Iceland|Icelandic króna; Germany|euro
France|euro; Italy|euro; Spain|euro; Ukraine|hryvnia
""")

# question variants (separated by '/') | answer sentence
MISC_FACTS = _table("""
How many continents are there?/What is the number of continents on Earth?|There are seven continents.
How many legs does a spider have?/What is the number of legs on a spider?|A spider has eight legs.
How many legs does an insect have?/How many legs do insects have?|An insect has six legs.
How many planets are in the solar system?/How many planets orbit the Sun?|There are eight planets in the solar system.
What is the largest planet in the solar system?/Which planet is the biggest in our solar system?|Jupiter is the largest planet in the solar system.
Which planet is closest to the Sun?/What is the nearest planet to the Sun?|Mercury is the planet closest to the Sun.
Which planet is known as the Red Planet?/What planet is called the Red Planet?|Mars is known as the Red Planet.
What is the largest ocean on Earth?/Which ocean is the biggest?|The Pacific Ocean is the largest ocean on Earth.
What is the tallest mountain on Earth?/Which mountain is the highest above sea level?|Mount Everest is the tallest mountain above sea level.
What is the hardest natural substance?/Which natural material is the hardest?|Diamond is the hardest natural substance.
At what temperature does water boil at sea level?/What is the boiling point of water at sea level?|Water boils at 100 °C (212 °F) at sea level.
At what temperature does water freeze?/What is the freezing point of water?|Water freezes at 0 °C (32 °F).
What is the largest mammal?/Which animal is the largest mammal on Earth?|The blue whale is the largest mammal.
How many bones are in the adult human body?/How many bones does an adult human have?|An adult human has 206 bones.
Who developed the theory of relativity?/Which scientist came up with the theory of relativity?|Albert Einstein developed the theory of relativity.
Who discovered penicillin?/Which scientist discovered penicillin?|Alexander Fleming discovered penicillin in 1928.
Who was the first person to walk on the Moon?/Who first stepped onto the Moon?|Neil Armstrong was the first person to walk on the Moon, in 1969.
Who proposed the theory of evolution by natural selection?/Which naturalist is known for the theory of natural selection?|Charles Darwin proposed the theory of evolution by natural selection.
Which gas do plants absorb from the air?/What gas do plants take in for photosynthesis?|Plants absorb carbon dioxide from the air.
What is the most abundant gas in Earth's atmosphere?/Which gas makes up most of the air?|Nitrogen is the most abundant gas in Earth's atmosphere.
What is the largest country by area?/Which country covers the largest area?|Russia is the largest country by area.
How many days are in a leap year?/How many days does a leap year have?|A leap year has 366 days.
How many sides does a hexagon have?/What is the number of sides of a hexagon?|A hexagon has six sides.
What is the smallest prime number?/Which number is the smallest prime?|The smallest prime number is 2.
How many minutes are in a day?/How many minutes does a day have?|A day has 1,440 minutes.
""")

ANIMAL_CLASSES = _table("""
whale|mammal; dolphin|mammal; bat|mammal; kangaroo|mammal; elephant|mammal
horse|mammal; tiger|mammal; rabbit|mammal; shark|fish; salmon|fish; tuna|fish
trout|fish; penguin|bird; eagle|bird; ostrich|bird; owl|bird; parrot|bird
sparrow|bird; frog|amphibian; salamander|amphibian; toad|amphibian
snake|reptile; crocodile|reptile; lizard|reptile; turtle|reptile
""")
ANIMAL_GROUPS = ('mammal', 'bird', 'fish', 'reptile', 'amphibian')

PALINDROMES = _words(
  'level, radar, civic, kayak, refer, rotor, madam, noon, racecar, stats, '
  'deified, reviver'
)

# first name | pronoun
NAMES = _table("""
Maria|she; James|he; Aisha|she; Liam|he; Sofia|she; Noah|he; Chen|he
Emma|she; Omar|he; Priya|she; Lucas|he; Hannah|she; Mateo|he; Yuki|she
Daniel|he; Fatima|she; Ethan|he; Olivia|she; Kofi|he; Grace|she; Ravi|he
Chloe|she; Diego|he; Nadia|she; Samuel|he; Lena|she; Hiro|he; Zara|she
Victor|he; Ingrid|she; Tom|he; Amara|she; Pablo|he; Julia|she; Ivan|he
Mei|she; Oscar|he; Leila|she; Felix|he; Rosa|she; Arjun|he; Elena|she
""")
SURNAMES = _words(
  'Smith, Garcia, Patel, Kim, Müller, Rossi, Nguyen, Johnson, Okafor, Silva, '
  'Novak, Tanaka, Brown, Haddad, Larsen, Dubois, Walker, Cohen, Rivera, Chen'
)
WEEKDAYS = _words('Monday, Tuesday, Wednesday, Thursday, Friday')

# English | French | Spanish | German
TRANSLATIONS = _table("""
cat|chat|gato|Katze; dog|chien|perro|Hund; house|maison|casa|Haus
water|eau|agua|Wasser; book|livre|libro|Buch; sun|soleil|sol|Sonne
moon|lune|luna|Mond; tree|arbre|árbol|Baum; bread|pain|pan|Brot
apple|pomme|manzana|Apfel; red|rouge|rojo|rot; blue|bleu|azul|blau
green|vert|verde|grün; black|noir|negro|schwarz; white|blanc|blanco|weiß
friend|ami|amigo|Freund; school|école|escuela|Schule; city|ville|ciudad|Stadt
day|jour|día|Tag; night|nuit|noche|Nacht; milk|lait|leche|Milch
cheese|fromage|queso|Käse; bird|oiseau|pájaro|Vogel; horse|cheval|caballo|Pferd
window|fenêtre|ventana|Fenster; door|porte|puerta|Tür; table|table|mesa|Tisch
chair|chaise|silla|Stuhl; flower|fleur|flor|Blume; sea|mer|mar|Meer
mountain|montagne|montaña|Berg; rain|pluie|lluvia|Regen; snow|neige|nieve|Schnee
hello|bonjour|hola|hallo; goodbye|au revoir|adiós|auf Wiedersehen
yes|oui|sí|ja; mother|mère|madre|Mutter; father|père|padre|Vater
brother|frère|hermano|Bruder; sister|sœur|hermana|Schwester
hand|main|mano|Hand; heart|cœur|corazón|Herz; love|amour|amor|Liebe
kitchen|cuisine|cocina|Küche; garden|jardin|jardín|Garten
money|argent|dinero|Geld; week|semaine|semana|Woche; please|s'il vous plaît|por favor|bitte
thank you|merci|gracias|danke; good night|bonne nuit|buenas noches|gute Nacht
thank you very much|merci beaucoup|muchas gracias|vielen Dank
see you tomorrow|à demain|hasta mañana|bis morgen; good luck|bonne chance|buena suerte|viel Glück
happy birthday|joyeux anniversaire|feliz cumpleaños|alles Gute zum Geburtstag
welcome|bienvenue|bienvenido|willkommen; one|un|uno|eins; two|deux|dos|zwei
three|trois|tres|drei; four|quatre|cuatro|vier; five|cinq|cinco|fünf
""")
LANGUAGES = ('French', 'Spanish', 'German')

PLURALS = _table("""
mouse|mice; child|children; person|people; tooth|teeth; foot|feet
goose|geese; man|men; woman|women; ox|oxen; cactus|cacti; leaf|leaves
knife|knives; wolf|wolves; life|lives; shelf|shelves; half|halves
box|boxes; bus|buses; church|churches; dish|dishes; glass|glasses
city|cities; baby|babies; party|parties; story|stories; berry|berries
potato|potatoes; tomato|tomatoes; hero|heroes; sheep|sheep; fish|fish
deer|deer; cat|cats; book|books; chair|chairs; day|days; key|keys
toy|toys; boy|boys; house|houses; horse|horses; apple|apples; phone|phones
piano|pianos; photo|photos; roof|roofs; fox|foxes; watch|watches
""")

ANTONYMS = _table("""
hot|cold; big|small; fast|slow; happy|sad; light|dark; early|late
open|closed; strong|weak; rich|poor; full|empty; hard|soft; high|low
young|old; wet|dry; loud|quiet; thick|thin; cheap|expensive; easy|difficult
clean|dirty; long|short; true|false; win|lose; buy|sell
push|pull; arrive|leave; remember|forget; accept|refuse; increase|decrease
inside|outside; above|below; before|after; always|never; friend|enemy
question|answer; begin|end; day|night; brave|cowardly; generous|selfish
ancient|modern; polite|rude; sharp|blunt; shallow|deep; wide|narrow
""")

RHYMES = _table("""
cat|hat, bat, mat; dog|log, fog, frog; cake|lake, bake, snake
light|night, kite, bright; moon|spoon, soon, June; tree|bee, free, sea
star|car, far, jar; rain|train, plain, chain; book|look, cook, hook
fun|sun, run, bun; bear|chair, hair, pair; ring|sing, king, wing
boat|coat, goat, note; bell|well, shell, tell; sock|rock, clock, block
mouse|house, blouse, spouse; bread|head, red, bed; fish|dish, wish, swish
day|play, say, way; door|floor, four, more; green|seen, queen, bean
cold|gold, bold, told; pen|ten, hen, men; ice|nice, rice, mice
""")

# base | past | past participle | third person singular
VERBS = _table("""
go|went|gone|goes; eat|ate|eaten|eats; see|saw|seen|sees
buy|bought|bought|buys; write|wrote|written|writes; take|took|taken|takes
make|made|made|makes; drink|drank|drunk|drinks; run|ran|run|runs
swim|swam|swum|swims; bring|brought|brought|brings; teach|taught|taught|teaches
catch|caught|caught|catches; find|found|found|finds; give|gave|given|gives
drive|drove|driven|drives; sing|sang|sung|sings; speak|spoke|spoken|speaks
begin|began|begun|begins; forget|forgot|forgotten|forgets
choose|chose|chosen|chooses; break|broke|broken|breaks; fly|flew|flown|flies
""")

WORD_POOL = _words("""
elephant, giraffe, umbrella, library, mountain, computer, sandwich, butterfly,
keyboard, window, pencil, notebook, chocolate, banana, strawberry, volcano,
penguin, kangaroo, dinosaur, telescope, bicycle, airplane, lemonade, pineapple,
rainbow, calendar, blanket, hospital, treasure, galaxy, journey, whisper,
mystery, harmony, lantern, octopus, paradise, question, triangle, vacation,
adventure, basketball, carrot, diamond, engine, festival, garden, helicopter,
island, jungle, kitchen, lemon, magnet, necklace, orange, parrot, quilt,
rocket, sunflower, tomato, unicorn, village, waterfall, yogurt, zebra
""")

FRUITS = _words(
  'apple, banana, cherry, mango, orange, pear, peach, plum, grape, kiwi, '
  'pineapple, strawberry, watermelon, lemon, apricot, blueberry, papaya, fig'
)
LIST_CATEGORIES = _table("""
fruits|apple, banana, cherry, mango, orange, pear, peach, plum, grape, kiwi, pineapple, strawberry
vegetables|carrot, broccoli, spinach, potato, onion, cucumber, pepper, cabbage, lettuce, zucchini, pea, celery
mammals|dog, cat, horse, elephant, whale, bat, lion, tiger, rabbit, dolphin, bear, giraffe
birds|eagle, sparrow, penguin, owl, parrot, robin, swan, flamingo, pigeon, hawk, crow, duck
colors|red, blue, green, yellow, purple, orange, pink, brown, black, white, gray, teal
European countries|France, Germany, Italy, Spain, Portugal, Poland, Greece, Sweden, Norway, Austria, Ireland, Belgium
programming languages|Python, Java, C++, JavaScript, Rust, Go, Ruby, Swift, Kotlin, Haskell, TypeScript, C#
musical instruments|piano, guitar, violin, flute, drums, trumpet, cello, clarinet, harp, saxophone, banjo, trombone
sports|soccer, tennis, basketball, swimming, cycling, rugby, volleyball, golf, baseball, hockey, boxing, rowing
kitchen utensils|spatula, whisk, ladle, peeler, grater, tongs, colander, rolling pin, cutting board, can opener
flowers|rose, tulip, daisy, lily, orchid, sunflower, daffodil, lavender, peony, violet, poppy, carnation
hand tools|hammer, screwdriver, wrench, pliers, saw, chisel, tape measure, level, drill, file
planets|Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus, Neptune
gemstones|ruby, emerald, sapphire, diamond, amethyst, topaz, opal, garnet, jade, pearl
board games|chess, checkers, Monopoly, Scrabble, backgammon, Go, Risk, Clue, Catan
things to pack for a beach trip|sunscreen, towel, swimsuit, sunglasses, hat, water bottle, flip-flops, snacks, beach umbrella
ways to save money|cook at home, make a budget, cancel unused subscriptions, buy second-hand, compare prices, use public transport, pack lunch for work
tips for better sleep|keep a regular bedtime, avoid screens before bed, keep the bedroom dark, limit caffeine after noon, exercise during the day, keep the room cool
benefits of regular exercise|stronger heart, better mood, more energy, better sleep, stronger muscles, lower stress, healthier weight
reasons to learn a new language|travel more easily, meet new people, improve memory, better job prospects, understand other cultures, enjoy films and books in the original
""")

ADJ_COMPARATIVES = _table("""
big|bigger; small|smaller; tall|taller; cheap|cheaper; fast|faster; old|older
long|longer; short|shorter; warm|warmer; heavy|heavier; easy|easier
happy|happier; quiet|quieter; strong|stronger; young|younger; bright|brighter
""")
