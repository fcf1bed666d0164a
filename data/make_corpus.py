#!/usr/bin/env python3
"""Write a corpus of simple children's stories made by a seeded generator.

Each story is assembled from parts chosen with one seeded ``random.Random``: a hero (name, kind,
trait), a friend, a place, a wanted object, one of twelve plots (a lost thing, a fear, a
quarrel over sharing, a storm, a new skill, an errand, a surprise, a broken vase, a new friend, a
picnic, a seed that grows, a runaway pet), lines of dialogue, an
ending and often a moral. The same seed and count give the same bytes on every run and platform
(only Python's ``random`` with an integer seed and plain string work are used).

Output: JSON-lines, one ``{"story": "..."}`` per line, the same shape as TinyStories' records,
so ``scripts/prepare_data.py`` reads both. Paragraphs inside a story are separated by "\\n".

    python data/make_corpus.py --stories 30000 --seed 1 --out data/stories.jsonl
"""
import argparse
import json
import random

GIRLS = ["Lily", "Mia", "Emma", "Sara", "Lucy", "Anna", "Zoe", "Ella", "Rosa", "Nina", "Ivy",
         "Maya", "Ruby", "Amy", "Kate", "Jill", "Tess", "Hana", "Leah", "Molly"]
BOYS = ["Tom", "Ben", "Max", "Sam", "Leo", "Jack", "Tim", "Finn", "Noah", "Eli", "Omar",
        "Theo", "Dan", "Luke", "Kai", "Ravi", "Jon", "Pete", "Hugo", "Milo"]
ANIMALS = [("bunny", "hopped"), ("puppy", "ran"), ("kitten", "crept"), ("duck", "waddled"),
           ("bear", "lumbered"), ("fox", "trotted"), ("mouse", "scurried"), ("frog", "jumped"),
           ("bird", "flew"), ("turtle", "crawled"), ("squirrel", "dashed"), ("pig", "trotted"),
           ("lamb", "skipped"), ("owl", "fluttered"), ("cow", "walked")]
TRAITS = ["kind", "curious", "shy", "brave", "happy", "little", "clever", "silly", "gentle",
          "busy", "sleepy", "cheerful", "careful", "friendly", "small"]
PLACES = [("the park", "under a big tree"), ("the garden", "behind the flowers"),
          ("the forest", "near an old log"), ("the beach", "in the soft sand"),
          ("the farm", "inside the red barn"), ("the town", "by the little shop"),
          ("the meadow", "in the tall grass"), ("the pond", "among the reeds"),
          ("the school", "next to the swings"), ("the hill", "at the very top"),
          ("the lake", "on the wooden dock"), ("the zoo", "close to the fence"),
          ("the library", "between the shelves"), ("the kitchen", "under the table"),
          ("the yard", "beside the fence"), ("the river", "on a flat stone")]
OBJECTS = [("ball", "red"), ("kite", "blue"), ("teddy bear", "brown"), ("hat", "yellow"),
           ("book", "green"), ("shell", "shiny"), ("toy car", "fast"), ("doll", "pretty"),
           ("boat", "small"), ("drum", "loud"), ("scarf", "warm"), ("cup", "pink"),
           ("crayon", "purple"), ("balloon", "round"), ("box", "big"), ("key", "gold"),
           ("flower", "bright"), ("cookie", "sweet"), ("bell", "tiny"), ("map", "old")]
FOODS = ["apples", "cake", "soup", "bread", "berries", "cookies", "pie", "carrots", "honey",
         "pancakes", "grapes", "cheese"]
BAKED = ["cake", "cookies", "pie", "pancakes", "bread", "muffins"]
WEATHER = [("rain", "the rain fell"), ("wind", "the wind blew hard"),
           ("snow", "the snow came down"), ("storm", "thunder boomed in the sky"),
           ("fog", "a thick fog rolled in")]
SKILLS = [("ride a bike", "rode the bike"), ("swim", "swam across the pool"),
          ("climb the tree", "climbed the tree"), ("bake a cake", "baked a cake"),
          ("paint a picture", "painted a picture"), ("read a book", "read the whole book"),
          ("sing a song", "sang the song"), ("tie the shoes", "tied the shoes"),
          ("build a tower", "built a tall tower"), ("fly the kite", "flew the kite")]
FEARS = [("the dark", "it was only a shadow"), ("the big dog", "the dog just wanted to play"),
         ("the loud noise", "it was only the wind on the door"),
         ("the deep water", "the water was not deep at all"),
         ("the tall slide", "the slide was fun and fast"),
         ("the new teacher", "the teacher was very nice")]
FEELINGS_GOOD = ["happy", "glad", "proud", "excited", "thankful", "joyful"]
FEELINGS_BAD = ["sad", "worried", "upset", "scared", "lonely", "grumpy"]
OPENINGS = ["Once upon a time, there was {hero}.", "One day, {hero} went to {place}.",
            "There once lived {hero}.", "Long ago, in a small town, there was {hero}.",
            "Every morning, {hero} liked to play at {place}.",
            "It was a sunny day, and {hero} was at {place}."]
MORALS = {
    "lost": ["{name} learned that friends help each other.",
             "From that day on, {name} kept the {obj} in a safe place."],
    "fear": ["{name} learned that it is good to be brave.",
             "The moral of the story is that things are not always as scary as they look."],
    "sharing": ["The moral of the story is that sharing makes everyone happy.",
                "{name} learned that toys are more fun when you share them."],
    "weather": ["{name} learned that it is best to stay together when things are hard.",
                "From that day on, {name} was never afraid of the {word} again."],
    "skill": ["And {name} learned that trying again is the best way to learn.",
              "{name} learned that it is okay to ask for help."],
    "helping": ["{name} learned that helping others feels good.",
                "The moral of the story is to finish your job before you play."],
    "surprise": ["{name} learned that giving is as much fun as getting.",
                 "The moral of the story is that being kind makes friends happy."],
    "friend": ["{name} learned that a kind word can make a new friend.",
               "The moral of the story is to always include others."],
    "picnic": ["{name} learned that there is always enough to share.",
               "The moral of the story is that a little kindness goes a long way."],
    "garden": ["{name} learned that good things take time.",
               "The moral of the story is to be patient and keep trying."],
    "pet": ["{name} learned that friends never give up on each other.",
            "From that day on, {name} always closed the gate."],
    "mess": ["{name} learned that telling the truth is always the right thing to do.",
             "The moral of the story is to play with balls outside."],
}
ENDINGS = ["They played together until the sun went down.", "Then they went home for dinner.",
           "That night, {name} slept with a big smile.", "It was the best day ever.",
           "They laughed and hugged each other.", "Mom gave them {food} to celebrate.",
           "{name} could not wait to come back tomorrow."]


class Person:
    """One character: how to name it the first time and after, and its pronouns."""

    def __init__(self, rng, exclude=()):
        if rng.random() < 0.7:
            girl = rng.random() < 0.5
            self.name = rng.choice([n for n in (GIRLS if girl else BOYS) if n not in exclude])
            self.kind = "girl" if girl else "boy"
            self.moves = "ran"
        else:
            girl = rng.random() < 0.5
            animal, self.moves = rng.choice(ANIMALS)
            self.name = rng.choice([n for n in (GIRLS if girl else BOYS) if n not in exclude])
            self.kind = animal
        self.he, self.him, self.his = ("she", "her", "her") if girl else ("he", "him", "his")
        self.trait = rng.choice(TRAITS)

    def intro(self):
        article = "an" if self.trait[0] in "aeiou" else "a"
        return f"{article} {self.trait} {self.kind} named {self.name}"


def cap(s):
    return s[0].upper() + s[1:]


def pick_feeling(rng, good):
    return rng.choice(FEELINGS_GOOD if good else FEELINGS_BAD)


def plot_lost_object(rng, h, f, place, spot, obj, color):
    return "lost", "", [
        f"{h.name} had a {color} {obj}. {cap(h.he)} loved it very much and took it everywhere.",
        f"One day, {h.name} could not find the {obj}. {cap(h.he)} looked in {h.his} room and "
        f"under the bed, but it was not there. {h.name} felt very {pick_feeling(rng, False)}.",
        f"\"Where is my {obj}?\" {h.he} asked. {f.name} the {f.kind} said, \"Do not worry. "
        f"I will help you look.\"",
        f"They went to {place} and looked {spot}. {rng.choice(['Soon', 'At last', 'After a while'])}, "
        f"{f.name} saw something {color}. \"Look! There it is!\" {f.he} said.",
        f"{h.name} hugged the {obj} and said, \"Thank you, {f.name}! You are a good friend.\"",
    ]


def plot_fear(rng, h, f, place, spot, obj, color):
    fear, truth = rng.choice(FEARS)
    return "fear", "", [
        f"{h.name} was afraid of {fear}. Every time {h.he} saw it, {h.he} wanted to hide.",
        f"One day at {place}, {h.name} met {fear} again. {cap(h.his)} legs shook and "
        f"{h.he} felt {pick_feeling(rng, False)}.",
        f"{f.name} came and held {h.his} hand. \"You can do it,\" {f.he} said. "
        f"\"I am right here with you.\"",
        f"{h.name} took a deep breath and looked again. Then {h.he} saw that {truth}.",
        f"{h.name} smiled. \"I am not afraid anymore!\" {h.he} said. {cap(h.he)} felt very "
        f"{pick_feeling(rng, True)}.",
    ]


def plot_sharing(rng, h, f, place, spot, obj, color):
    return "sharing", "", [
        f"{h.name} had a new {color} {obj}. {f.name} wanted to play with it too.",
        f"\"Can I play with your {obj}?\" {f.name} asked. \"No, it is mine!\" said {h.name}. "
        f"{f.name} felt {pick_feeling(rng, False)} and walked away.",
        f"{h.name} played alone {spot}, but it was not fun. {cap(h.he)} missed {h.his} friend.",
        f"So {h.name} went to {f.name} and said, \"I am sorry. Let us play with the {obj} "
        f"together.\" {f.name} smiled and said, \"Yes, please!\"",
        f"They took turns with the {obj}, and the game was much more fun with two.",
    ]


def plot_weather(rng, h, f, place, spot, obj, color):
    word, happened = rng.choice(WEATHER)
    return "weather", word, [
        f"{h.name} and {f.name} went to {place} to play with a {color} {obj}.",
        f"Suddenly, {happened}. \"Oh no!\" said {f.name}. \"We need to find a safe place!\"",
        f"{h.name} saw a little hut {spot}. They {h.moves} to it as fast as they could.",
        f"Inside the hut, they waited and told each other funny stories. Soon the {word} "
        f"stopped and the sun came out.",
        f"\"We were safe because we stayed together,\" said {h.name}. They went outside and "
        f"saw a big rainbow in the sky.",
    ]


def plot_skill(rng, h, f, place, spot, obj, color):
    skill, did = rng.choice(SKILLS)
    return "skill", "", [
        f"{h.name} wanted to {skill}. {cap(h.he)} tried and tried, but it was very hard.",
        f"\"I can not do it,\" {h.name} said. {cap(h.he)} felt {pick_feeling(rng, False)}.",
        f"{f.name} said, \"Let me show you. Go slow, and do not give up.\" {f.name} showed "
        f"{h.him} how to do it, one step at a time.",
        f"{h.name} tried again. And again. Then, at last, {h.he} {did}!",
        f"\"I did it!\" {h.name} shouted. {f.name} clapped, and {h.name} felt so "
        f"{pick_feeling(rng, True)}.",
    ]


def plot_helping(rng, h, f, place, spot, obj, color):
    food = rng.choice(FOODS)
    return "helping", "", [
        f"{h.name}'s mom made {food} for grandma. \"Can you take this to grandma?\" she asked.",
        f"{h.name} said yes and walked to {place} with {f.name}. On the way, they saw "
        f"a {color} {obj} {spot}.",
        f"\"Let us stop and play,\" said {f.name}. But {h.name} said, \"No, grandma is "
        f"waiting for the {food}.\"",
        f"They walked on and gave the {food} to grandma. Grandma was very "
        f"{pick_feeling(rng, True)}. \"You are such good helpers,\" she said.",
        f"Grandma gave them a hug, and then they all ate the {food} together.",
    ]


def plot_surprise(rng, h, f, place, spot, obj, color):
    food = rng.choice(BAKED)
    return "surprise", "", [
        f"It was {f.name}'s birthday. {h.name} wanted to make a surprise for {f.him}.",
        f"{h.name} found a {color} {obj} and wrapped it in paper. Then {h.he} made some "
        f"{food} with mom.",
        f"{h.name} hid the gift {spot} at {place}. \"Come with me,\" {h.he} said to {f.name}.",
        f"When {f.name} saw the gift and the {food}, {f.he} jumped up and down. "
        f"\"Thank you! This is the best surprise!\" {f.he} said.",
        f"{h.name} felt {pick_feeling(rng, True)} because {h.his} friend was happy.",
    ]


def plot_mess(rng, h, f, place, spot, obj, color):
    return "mess", "", [
        f"{h.name} was playing with a {color} {obj} in the house. {cap(h.he)} threw it high "
        f"in the air.",
        f"Crash! The {obj} hit a vase and the vase broke. {h.name} felt {pick_feeling(rng, False)}.",
        f"{cap(h.he)} wanted to hide, but {f.name} said, \"It is better to tell the truth.\"",
        f"{h.name} went to mom and said, \"I am sorry, I broke the vase.\" Mom said, \"Thank "
        f"you for telling me. Let us clean it up together.\"",
        f"After that, {h.name} played with the {obj} outside at {place}, where it was safe.",
    ]


def plot_new_friend(rng, h, f, place, spot, obj, color):
    return "friend", "", [
        f"One morning, a new {f.kind} came to {place}. {cap(f.he)} stood alone {spot} and "
        f"looked {pick_feeling(rng, False)}.",
        rng.choice([f"{h.name} wanted to say hello, but {h.he} felt shy.",
                    f"{h.name} saw {f.him} and wondered why {f.he} was alone."]),
        f"Then {h.name} took {h.his} {color} {obj} and walked over. \"Hi, I am {h.name}. "
        f"Do you want to play with me?\" {h.he} asked.",
        f"The new {f.kind} smiled a big smile. \"Yes! My name is {f.name},\" {f.he} said.",
        rng.choice([f"They played with the {obj} all day and laughed a lot.",
                    f"They took turns with the {obj} and became the best of friends."]),
    ]


def plot_picnic(rng, h, f, place, spot, obj, color):
    food, other = rng.sample(FOODS, 2)
    return "picnic", "", [
        f"{h.name} and {f.name} planned a picnic at {place}. They packed {food}, {other} and "
        f"a {color} {obj}.",
        f"They sat {spot} and opened the basket. But a hungry "
        f"{rng.choice(['ant', 'bird', 'squirrel', 'goat', 'duck'])} came and took some {food}!",
        f"\"Hey, that is our {food}!\" said {f.name}. {h.name} laughed. "
        f"\"It is okay. We have a lot. We can share.\"",
        f"So they gave a little {food} to their new guest, and they ate the {other} themselves.",
        f"It was a {rng.choice(['happy', 'funny', 'lovely', 'sunny'])} picnic, and everyone was full.",
    ]


def plot_garden(rng, h, f, place, spot, obj, color):
    plant = rng.choice(["sunflower", "tomato", "carrot", "rose", "pumpkin", "bean"])
    return "garden", "", [
        f"{h.name} found a small seed {spot}. \"What will it grow into?\" {h.he} asked {f.name}.",
        f"\"Let us plant it and see,\" said {f.name}. They dug a hole, put the seed in and gave "
        f"it water.",
        f"Every day {h.name} came to water the seed. For many days nothing happened, and "
        f"{h.name} felt {pick_feeling(rng, False)}.",
        f"\"Be patient,\" said {f.name}. Then one morning, a tiny green leaf came up. Soon it grew "
        f"into a big {plant}!",
        f"{h.name} clapped {h.his} hands. \"We did it! Our {plant} is so {color}!\"",
    ]


def plot_lost_pet(rng, h, f, place, spot, obj, color):
    pet, sound = rng.choice([("puppy", "woof"), ("kitten", "meow"), ("duckling", "quack"),
                             ("lamb", "baa"), ("bunny", "squeak")])
    pet_name = rng.choice(["Spot", "Fluffy", "Buttons", "Pip", "Coco", "Sunny", "Biscuit"])
    return "pet", "", [
        f"{h.name} had a little {pet} named {pet_name}. One day, {pet_name} ran away.",
        f"{h.name} looked everywhere, but {h.he} could not find {pet_name}. {cap(h.he)} started "
        f"to cry.",
        f"{f.name} said, \"Let us look at {place}. {pet_name} likes it there.\" So they went "
        f"together and called, \"{pet_name}! {pet_name}!\"",
        f"Then they heard a soft \"{sound}\" {spot}. There was {pet_name}, playing with a "
        f"{color} {obj}!",
        f"{h.name} picked {pet_name} up and held {rng.choice(['it', 'the ' + pet])} close. "
        f"\"I will always keep you safe,\" {h.he} said.",
    ]


PLOTS = [plot_lost_object, plot_fear, plot_sharing, plot_weather, plot_skill, plot_helping,
         plot_surprise, plot_mess, plot_new_friend, plot_picnic, plot_garden, plot_lost_pet]


def make_story(rng):
    """One story as paragraphs joined by newlines."""
    hero = Person(rng)
    friend = Person(rng, exclude=(hero.name,))
    place, spot = rng.choice(PLACES)
    obj, color = rng.choice(OBJECTS)
    opening = rng.choice(OPENINGS).format(hero=hero.intro(), place=place)
    if rng.random() < 0.4:
        opening += f" {cap(hero.he)} lived near {place} with {hero.his} family."
    plot = rng.choice(PLOTS)
    if plot is not plot_new_friend:
        opening += f" {cap(hero.his)} best friend was {friend.intro()}."
    kind, word, body = plot(rng, hero, friend, place, spot, obj, color)
    ending = rng.choice(ENDINGS).format(name=hero.name, food=rng.choice(FOODS))
    paragraphs = [opening] + body[:2] + [" ".join(body[2:])]
    closing = ending
    if rng.random() < 0.6:
        closing += " " + rng.choice(MORALS[kind]).format(name=hero.name, obj=obj, word=word)
    paragraphs.append(closing)
    return "\n".join(paragraphs)


def write_corpus(path, n_stories, seed):
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for _ in range(n_stories):
            out.write(json.dumps({"story": make_story(rng)}) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stories", type=int, default=30000, help="number of stories to write")
    p.add_argument("--seed", type=int, default=1, help="seed of the story generator")
    p.add_argument("--out", required=True, help="output JSON-lines file")
    a = p.parse_args(argv)
    write_corpus(a.out, a.stories, a.seed)


if __name__ == "__main__":
    main()
