#!/usr/bin/env python3
"""Generate the shipped SYNTHETIC Korean reading-comprehension sample.

Writes data/sample/train.json and data/sample/test.json in SQuAD v1.1 layout.
Everything here is invented from templates (fictional cities, people,
companies, rivers and inventions); no text comes from any real dataset.

Deterministic: the same seed always produces byte-identical files.

    .venv/bin/python tools/make_sample.py
"""
import json
import os
import random
import re
import sys

SEED = 20240611
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "data", "sample")

N_TRAIN_DOCS = 80
N_TEST_DOCS = 20
MIN_CTX, MAX_CTX = 200, 900

# ---------------------------------------------------------------------------
# Korean particle (josa) selection
# ---------------------------------------------------------------------------
JOSA = {
    "은": ("은", "는"),
    "이": ("이", "가"),
    "을": ("을", "를"),
    "과": ("과", "와"),
    "으로": ("으로", "로"),
    "이다": ("이다", "다"),
    "이며": ("이며", "며"),
    "이라고": ("이라고", "라고"),
    "이라는": ("이라는", "라는"),
    "이었다": ("이었다", "였다"),
}
DIGIT_BATCHIM = {"0": True, "1": True, "2": False, "3": True, "4": False,
                 "5": False, "6": True, "7": True, "8": True, "9": False}
DIGIT_RIEUL = {"1", "7", "8"}


def _last_sound(word):
    """(has_batchim, batchim_is_rieul) for the last pronounced char."""
    for ch in reversed(word):
        if "\uac00" <= ch <= "\ud7a3":
            jong = (ord(ch) - 0xAC00) % 28
            return jong != 0, jong == 8
        if ch.isdigit():
            return DIGIT_BATCHIM[ch], ch in DIGIT_RIEUL
        if ch.isalpha():
            c = ch.lower()
            if c in "lr":
                return True, True
            return c in "mnk", False
    return False, False


def josa(word, marker):
    with_b, without_b = JOSA[marker]
    has_b, rieul = _last_sound(word)
    if marker == "으로" and rieul:
        return "로"
    return with_b if has_b else without_b


TOKEN = re.compile(r"\{(\w+)\}|\[(\w+)\]")


def render(template, values):
    """Render a template; returns (text, {key: [start offsets]}).

    `{key}` inserts values[key]; `[은]`-style markers insert the particle
    form that fits the last pronounced character written so far.
    """
    out = ""
    spans = {}
    last = 0
    for m in TOKEN.finditer(template):
        out += template[last:m.start()]
        key, marker = m.group(1), m.group(2)
        if key is not None:
            spans.setdefault(key, []).append(len(out))
            out += values[key]
        else:
            out += josa(out, marker)
        last = m.end()
    out += template[last:]
    return out, spans


# ---------------------------------------------------------------------------
# Word pools (all invented)
# ---------------------------------------------------------------------------
SYL = list("가나다라마바사아자차카타파하로리미벨솔온윤한결담빈서연은채현린무세진주혜영도란포베네르시엘모우노키레티")
SURNAMES = list("김이박최정강조윤장임한오서신권황안송류홍")
GIVEN = list("하윤서준민지도현수아우진예린채원시온결담빛솔은재유나태희")
COUNTRIES = ["에르단 왕국", "솔비아 공화국", "노르테아 연방", "카렌 공국", "베르무 자치령", "한울 연합"]
REGIONS = ["북부 고원", "남부 해안", "동부 평야", "서부 산악 지대", "중부 분지", "북서 호수 지방"]
COLOURS = ["붉은색", "푸른색", "초록색", "노란색", "보라색", "흰색", "검은색", "회색", "주황색", "하늘색"]
PRODUCTS = ["도자기", "유리 공예품", "포도주", "비단", "녹차", "목재 가구", "천일염", "한지", "치즈", "은세공품"]
INDUSTRIES = ["반도체", "조선", "화학", "식품", "게임", "항공", "제약", "출판", "로봇", "섬유"]
INVENTION_KINDS = ["증기 펌프", "자동 직조기", "휴대용 계산기", "방수 외투", "태양열 난로",
                   "음성 기록 장치", "접이식 자전거", "수동 세탁기", "광학 망원경", "전기 주전자"]
MATERIALS = ["구리", "청동", "강철", "알루미늄", "참나무", "대나무", "유리", "도자기 흙"]
FISH = ["송어", "잉어", "메기", "은어", "연어", "뱀장어"]
EN_FIRST = ["Daniel", "Mira", "Oscar", "Helena", "Victor", "Lena", "Arthur", "Nora", "Felix", "Clara"]
EN_LAST = ["Hart", "Collins", "Brandt", "Moreau", "Quinn", "Larsen", "Okafor", "Novak", "Reyes", "Whitlock"]
EN_WORDS = ["bridges", "lanterns", "bells", "gardens", "towers", "windmills", "canals", "kilns"]
EN_SUFFIX = ["Systems", "Labs", "Works", "Dynamics", "Foundry", "Industries"]
BOOK_WORDS = ["푸른", "잃어버린", "먼", "조용한", "붉은", "오래된", "작은", "끝없는"]
BOOK_NOUNS = ["바다의 노래", "정원", "등대", "기차역", "겨울 편지", "시계탑", "지도", "숲의 기억"]


class Gen:
    def __init__(self, seed):
        self.r = random.Random(seed)
        self.used = set()

    def pick(self, xs):
        return self.r.choice(xs)

    def uniq(self, make):
        for _ in range(1000):
            v = make()
            if v not in self.used:
                self.used.add(v)
                return v
        raise RuntimeError("name space exhausted")

    def word(self, n):
        return "".join(self.r.choice(SYL) for _ in range(n))

    def city(self):
        return self.uniq(lambda: self.word(self.r.choice([2, 3])))

    def person(self):
        if self.r.random() < 0.12:
            return self.uniq(lambda: f"{self.pick(EN_FIRST)} {self.pick(EN_LAST)}")
        return self.uniq(lambda: self.pick(SURNAMES) + self.pick(GIVEN) + self.pick(GIVEN))

    def company(self):
        if self.r.random() < 0.3:
            return self.uniq(lambda: f"{self.word(2)} {self.pick(EN_SUFFIX)}")
        return self.uniq(lambda: self.word(2) + self.pick(["전자", "중공업", "제약", "식품", "출판사", "상사"]))

    def river(self):
        return self.uniq(lambda: self.word(2) + "강")

    def mountain(self):
        return self.uniq(lambda: self.word(2) + "산")

    def book(self):
        def make():
            if self.r.random() < 0.5:
                return f"{self.pick(BOOK_WORDS)} {self.pick(BOOK_NOUNS)}"
            return f"{self.word(2)}의 {self.pick(BOOK_NOUNS)}"
        return self.uniq(make)

    def year(self, lo=1500, hi=2015):
        return f"{self.r.randint(lo, hi)}년"

    def num(self, lo, hi, unit, comma=True):
        n = self.r.randint(lo, hi)
        s = f"{n:,}" if comma else str(n)
        return f"{s}{unit}"

    def english_name(self, base_words=1):
        cons = "bdfghklmnprstvz"
        vow = "aeiou"
        w = "".join(self.r.choice(cons) + self.r.choice(vow) for _ in range(self.r.randint(2, 3)))
        return w.capitalize()


# ---------------------------------------------------------------------------
# Document types.  Each returns (title, values, facts, distractors)
#   facts: list of (template_variants, question_variants, answer_key) or
#          (template_variants, None, None) for plain sentences
#   distractors: list of template variants rendered with fresh other values
# ---------------------------------------------------------------------------

def doc_city(g):
    name = g.city()
    v = {
        "name": name,
        "country": g.pick(COUNTRIES),
        "region": g.pick(REGIONS),
        "year": g.year(1300, 1900),
        "founder": g.person(),
        "pop": g.num(12000, 2400000, "명"),
        "pyear": g.year(2005, 2023),
        "river": g.river(),
        "product": g.pick(PRODUCTS),
        "mayor": g.person(),
        "english": f"{g.english_name()} City",
        "colour": g.pick(COLOURS),
        "height": g.num(40, 1900, "미터"),
        "sister": g.city(),
    }
    facts = [
        (["{name}[은] {country} {region}에 위치한 도시이다.",
          "{country}의 {region}에 자리한 {name}[은] 오래된 교역 도시이다."],
         ["{name}[은] 어느 나라에 속한 도시인가?", "{name}[이] 위치한 나라는 어디인가?"], "country"),
        (["{name}[은] {year}에 {founder}[이] 처음 세웠다.",
          "{year}, 상인 출신의 {founder}[이] 강가에 작은 시장을 연 것이 {name}의 시작이었다."],
         ["{name}[은] 몇 년에 세워졌는가?", "{name}[이] 처음 세워진 해는 언제인가?"], "year"),
        (["도시를 세운 사람으로 기록된 인물은 {founder}[이다].",
          "시청 앞 광장에는 설립자 {founder}의 동상이 서 있다."],
         ["{name}[을] 세운 사람은 누구인가?", "{name}의 설립자는 누구인가?"], "founder"),
        (["{pyear} 조사에 따르면 {name}의 인구는 {pop}[이다].",
          "{pyear} 기준으로 이 도시에는 {pop}[이] 살고 있었다."],
         ["{pyear} 기준 {name}의 인구는 얼마인가?", "{name}의 인구는 몇 명으로 조사되었는가?"], "pop"),
        (["도시 한가운데로 {river}[이] 흐르며, 여름이면 강변에서 축제가 열린다.",
          "{name}의 북쪽 경계는 {river}[으로] 이루어져 있다."],
         ["{name}[을] 지나는 강의 이름은 무엇인가?", "{name} 곁을 흐르는 강은?"], "river"),
        (["{name}[은] 예로부터 {product}[으로] 유명하다.",
          "이 지역의 대표 특산품은 {product}[이다]."],
         ["{name}의 대표 특산품은 무엇인가?", "{name}[이] 예로부터 유명한 물품은?"], "product"),
        (["현재 시장은 {mayor}[이며], 시의회는 스물한 명의 의원으로 구성된다.",
          "시민들은 지난 선거에서 {mayor}[을] 시장으로 뽑았다."],
         ["{name}의 현재 시장은 누구인가?"], "mayor"),
        (["영문 표기는 \"{english}\"[이다].", "외국 문헌에서는 이 도시를 '{english}'[이라고] 부른다."],
         ["{name}의 영문 표기는 무엇인가?"], "english"),
        (["시의 깃발은 {colour} 바탕에 흰 별 세 개가 그려져 있다."],
         ["{name}의 깃발 바탕색은 무엇인가?"], "colour"),
        (["도심의 평균 해발 고도는 {height}[이다]."],
         ["{name} 도심의 평균 해발 고도는?"], "height"),
        (["{name}[은] {sister}[과] 자매결연을 맺고 있다."],
         ["{name}의 자매 도시는 어디인가?"], "sister"),
    ]
    distract = [
        "이웃 도시 {oc}[은] {oy}에 세워졌고 인구는 {on}[이다].",
        "{op}[은] {oy}에 이 도시를 방문해 {oprod} 시장을 둘러보았다.",
        "{oy}에는 큰 홍수가 나서 {on}[이] 피난을 떠나야 했다.",
        "남쪽으로 {ok}킬로미터 떨어진 {oc}의 시장은 {op}[이다].",
        "{or}의 하류에 있는 {oc}[은] {oprod}[으로] 알려져 있다.",
        "In {oyn}, a traveller named {oe} described {oc} as \"a city of {ow}\".",
        "{oy}에 지어진 시립 도서관에는 {on2}권의 책이 소장되어 있다.",
        "지역 신문 《{oc} 일보》는 {oy}에 창간되었다.",
        "{op}[은] 《{obook}》에서 이 도시의 {ocol} 지붕들을 묘사하였다.",
    ]
    return name, v, facts, distract


def doc_person(g):
    name = g.person()
    v = {
        "name": name,
        "byear": g.year(1700, 1990),
        "city": g.city(),
        "job": g.pick(["화가", "건축가", "작곡가", "소설가", "물리학자", "탐험가", "요리사", "사진가"]),
        "book": g.book(),
        "bookyear": g.year(1750, 2020),
        "teacher": g.person(),
        "award": g.pick(["금빛 깃털상", "은하 예술상", "푸른 등대상", "한울 문화상", "북극성 학술상"]),
        "ayear": g.year(1800, 2022),
        "spouse": g.person(),
        "colour": g.pick(COLOURS),
        "children": f"{g.r.randint(2, 9)}명",
        "works": g.num(30, 1500, "점"),
    }
    facts = [
        (["{name}[은] {byear} {city}에서 태어난 {job}[이다].",
          "{job} {name}[은] {byear}에 {city}의 작은 마을에서 태어났다."],
         ["{name}[은] 몇 년에 태어났는가?", "{name}[이] 태어난 해는?"], "byear"),
        (["그의 고향은 {city}[이다].", "어린 시절을 보낸 곳은 고향인 {city}[이었다]."],
         ["{name}의 고향은 어디인가?", "{name}[은] 어느 도시에서 태어났는가?"], "city"),
        (["{bookyear}에 발표한 《{book}》[은] 그의 대표작으로 꼽힌다.",
          "그는 {bookyear}에 《{book}》[이라는] 책을 펴냈다."],
         ["{name}의 대표작은 무엇인가?", "{name}[이] 펴낸 책의 제목은?"], "book"),
        (["그는 젊은 시절 {teacher}에게서 기술을 배웠다.", "그의 스승은 {teacher}[이었다]."],
         ["{name}의 스승은 누구인가?", "{name}에게 기술을 가르친 사람은?"], "teacher"),
        (["{ayear}에는 {award}[을] 받았다.", "그는 {ayear}에 {award}[을] 수상하며 이름을 알렸다."],
         ["{name}[이] 받은 상의 이름은?", "{name}[은] 어떤 상을 수상하였는가?"], "award"),
        (["{name}[은] {spouse}[과] 결혼하여 {children}의 자녀를 두었다."],
         ["{name}의 배우자는 누구인가?"], "spouse"),
        (["그는 {colour} 물감을 유난히 좋아하였다.", "그의 작업실 벽은 늘 {colour}[으로] 칠해져 있었다."],
         ["{name}[이] 좋아한 색은 무엇인가?"], "colour"),
        (["평생 남긴 작품은 {works}[으로] 추정된다."],
         ["{name}[이] 평생 남긴 작품은 몇 점인가?"], "works"),
    ]
    distract = [
        "같은 해 {oc}에서는 {op}[이] 태어났다.",
        "그의 친구 {op}[은] {oy}에 《{obook}》[을] 발표하였다.",
        "{op}[은] {oy}에 {oaward}[을] 받았지만 곧 은퇴하였다.",
        "{oy}에는 {oc}[으로] 이사하여 {ok}년 동안 머물렀다.",
        "Critic {oe} once called his studio \"the quietest room in {oc}\".",
        "동료 {op}[은] {ocol}[을] 즐겨 썼으며 {on2}점의 작품을 남겼다.",
        "{oy}에 열린 전시회에는 {on}[이] 다녀갔다.",
        "그는 「{obook}」[이라는] 제목의 강연을 {oc}에서 하기도 했다.",
    ]
    return name, v, facts, distract


def doc_company(g):
    name = g.company()
    v = {
        "name": name,
        "year": g.year(1850, 2015),
        "founder": g.person(),
        "city": g.city(),
        "industry": g.pick(INDUSTRIES),
        "staff": g.num(40, 98000, "명"),
        "sales": f"{g.r.randint(2, 980)}억 원",
        "ceo": g.person(),
        "product": g.uniq(lambda: f"{g.english_name()}-{g.r.randint(1, 99)}"),
        "colour": g.pick(COLOURS),
        "rival": g.company(),
    }
    facts = [
        (["{name}[은] {year} {founder}[이] {city}에서 설립한 {industry} 기업이다.",
          "{industry} 기업 {name}[은] {year}에 문을 열었다."],
         ["{name}[은] 언제 설립되었는가?", "{name}[이] 설립된 해는?"], "year"),
        (["창업자는 {founder}[이며], 처음에는 직원 세 명으로 시작하였다.",
          "회사를 세운 {founder}[은] 원래 대학 연구원이었다."],
         ["{name}[을] 창업한 사람은 누구인가?", "{name}의 창업자는?"], "founder"),
        (["본사는 {city}에 있다.", "현재 본사는 {city} 중심가의 유리 건물에 자리 잡고 있다."],
         ["{name}의 본사는 어느 도시에 있는가?"], "city"),
        (["직원 수는 {staff}[이다].", "전 세계에서 일하는 직원은 모두 {staff}[이다]."],
         ["{name}의 직원 수는 몇 명인가?"], "staff"),
        (["지난해 매출은 {sales}[이었다]."],
         ["{name}의 지난해 매출은 얼마인가?"], "sales"),
        (["현재 대표이사는 {ceo}[이다].", "{ceo}[이] 대표이사를 맡은 뒤 회사는 크게 성장하였다."],
         ["{name}의 대표이사는 누구인가?"], "ceo"),
        (["가장 잘 팔린 제품은 \"{product}\"[이다].", "대표 제품인 {product}[은] 해외에서도 인기가 높다."],
         ["{name}의 대표 제품 이름은 무엇인가?"], "product"),
        (["회사의 상징색은 {colour}[이다]."],
         ["{name}의 상징색은?"], "colour"),
        (["주요 경쟁사는 {rival}[이다]."],
         ["{name}의 주요 경쟁사는 어디인가?"], "rival"),
    ]
    distract = [
        "경쟁사 {ocomp}[은] {oy}에 설립되었으며 직원은 {on}[이다].",
        "{op}[은] {oy}에 이 회사의 지분을 사들였다.",
        "{oy}에는 {oc}에 두 번째 공장을 세웠다.",
        "The company's slogan, \"{ow} for everyone\", was coined by {oe}.",
        "{ocomp}의 대표 {op}[은] 인수 제안을 거절하였다.",
        "한때 매출이 {osales}까지 떨어진 적도 있었다.",
        "{oy}에 출시한 \"{oprodname}\"[은] 판매가 부진하였다.",
        "{oc} 지사에는 {on2}명이 근무한다.",
    ]
    return name, v, facts, distract


def doc_river(g):
    name = g.river()
    v = {
        "name": name,
        "length": g.num(30, 2900, "킬로미터"),
        "source": g.mountain(),
        "mouth": g.pick(["동해", "서해", "남해", "은빛 만", "북쪽 호수", "푸른 바다"]),
        "city": g.city(),
        "bridge": g.uniq(lambda: g.word(2) + "교"),
        "byear": g.year(1600, 2010),
        "fish": g.pick(FISH),
        "country": g.pick(COUNTRIES),
        "dam": g.uniq(lambda: g.word(2) + "댐"),
        "colour": g.pick(COLOURS),
    }
    facts = [
        (["{name}[은] {country}[을] 흐르는 길이 {length}의 강이다.",
          "{country}의 {name}[은] 총 길이가 {length}에 이른다."],
         ["{name}의 길이는 얼마인가?", "{name}의 총 길이는?"], "length"),
        (["이 강은 {source}에서 발원한다.", "{name}의 발원지는 {source}[이다]."],
         ["{name}의 발원지는 어디인가?", "{name}[은] 어느 산에서 시작되는가?"], "source"),
        (["강물은 {mouth}[으로] 흘러든다.", "하구는 {mouth}에 닿아 있다."],
         ["{name}[은] 어디로 흘러드는가?"], "mouth"),
        (["가장 큰 강변 도시는 {city}[이다].", "강 중류에는 {city}[이] 자리 잡고 있다."],
         ["{name} 유역에서 가장 큰 도시는?", "{name} 중류에 있는 도시는 어디인가?"], "city"),
        (["{byear}에 놓인 {bridge}[은] 이 강의 첫 번째 다리였다."],
         ["{name}에 처음 놓인 다리의 이름은?", "{name}의 첫 번째 다리는 무엇인가?"], "bridge"),
        (["첫 다리는 {byear}에 완공되었다."],
         ["{name}의 첫 다리는 언제 완공되었는가?"], "byear"),
        (["강에는 {fish}[이] 많이 살아 낚시꾼들이 즐겨 찾는다."],
         ["{name}에 많이 사는 물고기는?"], "fish"),
        (["상류의 {dam}[은] 홍수를 막기 위해 지어졌다."],
         ["{name} 상류에 지어진 댐의 이름은?"], "dam"),
        (["맑은 날에는 물빛이 {colour}[으로] 보인다."],
         ["맑은 날 {name}의 물빛은 어떤 색으로 보이는가?"], "colour"),
    ]
    distract = [
        "지류인 {or}[은] 길이가 {olen}[이다].",
        "{oy}에는 {oc} 부근에서 제방이 무너졌다.",
        "이웃한 {or}[은] {omt}에서 발원한다.",
        "Local guides call the upper valley \"the {ow} of {oc}\".",
        "{op}[은] {oy}에 강 전체를 배로 탐사하였다.",
        "{or}에 놓인 {obridge}[은] {oy}에 완공되었다.",
        "하류의 {oc}에는 {on}[이] 산다.",
        "{or}에서는 {ofish}[이] 주로 잡힌다.",
    ]
    return name, v, facts, distract


def doc_invention(g):
    kind = g.pick(INVENTION_KINDS)
    name = g.uniq(lambda: f"{g.word(2)} {kind}")
    v = {
        "name": name,
        "inventor": g.person(),
        "year": g.year(1750, 2010),
        "city": g.city(),
        "material": g.pick(MATERIALS),
        "weight": g.num(2, 950, "킬로그램", comma=False),
        "price": f"{g.r.randint(3, 900)}만 원",
        "company": g.company(),
        "patent": f"제{g.r.randint(1000, 99999)}호",
        "english": f"{g.english_name()} {g.pick(['Engine', 'Device', 'Machine', 'Unit'])}",
        "colour": g.pick(COLOURS),
    }
    facts = [
        (["{name}[은] {year}에 {inventor}[이] 발명하였다.",
          "{inventor}[은] {year}에 {name}[을] 처음 선보였다."],
         ["{name}[은] 누가 발명하였는가?", "{name}의 발명가는 누구인가?"], "inventor"),
        (["첫 시제품은 {year} 겨울에 완성되었다.", "특허를 받은 해는 {year}[이다]."],
         ["{name}[은] 몇 년에 발명되었는가?", "{name}의 특허를 받은 해는?"], "year"),
        (["시제품은 {city}의 작은 공방에서 만들어졌다."],
         ["{name}의 시제품은 어느 도시에서 만들어졌는가?"], "city"),
        (["몸체는 주로 {material}[으로] 만들어졌다.", "주재료는 {material}[이다]."],
         ["{name}의 주재료는 무엇인가?"], "material"),
        (["무게는 {weight}[이다].", "완성품의 무게는 {weight} 정도였다."],
         ["{name}의 무게는 얼마인가?"], "weight"),
        (["출시 당시 가격은 {price}[이었다]."],
         ["{name}의 출시 가격은?"], "price"),
        (["대량 생산은 {company}[이] 맡았다.", "{company}[이] 판매권을 사들여 대량 생산에 나섰다."],
         ["{name}[을] 대량 생산한 회사는?"], "company"),
        (["특허 번호는 {patent}[이다]."],
         ["{name}의 특허 번호는 무엇인가?"], "patent"),
        (["해외에서는 \"{english}\"[이라는] 이름으로 팔렸다.", "수출용 모델의 이름은 {english}[이었다]."],
         ["{name}의 수출용 이름은 무엇인가?"], "english"),
        (["초기 모델은 모두 {colour}[으로] 칠해졌다."],
         ["{name} 초기 모델의 색은?"], "colour"),
    ]
    distract = [
        "비슷한 시기에 {op}[도] 다른 장치를 만들었다.",
        "{op}[은] {oy}에 개량형을 내놓았지만 무게가 {owt}나 되었다.",
        "{oy}에 {oc}에서 열린 박람회에는 {on}[이] 몰렸다.",
        "An early review by {oe} called it \"the {ow} machine\".",
        "경쟁 제품의 가격은 {oprice}[이었다].",
        "{ocomp}[은] {oy}에 비슷한 제품의 특허 {opatent}[을] 냈다.",
        "개량형은 {omat}[으로] 만들어졌다.",
        "{oy}에는 {oc}의 박물관이 {ocol} 초기형 한 대를 사들였다.",
    ]
    return name, v, facts, distract


DOC_TYPES = [doc_city, doc_person, doc_company, doc_river, doc_invention]

JOSA["도"] = ("도", "도")


class _Lazy(dict):
    """Computes each distractor value on first use only."""

    def __init__(self, makers):
        super().__init__()
        self.makers = makers

    def __missing__(self, key):
        val = self.makers[key]()
        self[key] = val
        return val


def other_values(g):
    """Fresh distractor values (same types as the real facts)."""
    return _Lazy({
        "oc": lambda: g.city(),
        "op": lambda: g.person(),
        "oy": lambda: g.year(1650, 2022),
        "oyn": lambda: str(g.r.randint(1500, 2020)),
        "on": lambda: g.num(500, 2500000, "명"),
        "on2": lambda: f"{g.r.randint(100, 90000):,}",
        "ok": lambda: str(g.r.randint(3, 90)),
        "oprod": lambda: g.pick(PRODUCTS),
        "or": lambda: g.river(),
        "oe": lambda: f"{g.pick(EN_FIRST)} {g.pick(EN_LAST)}",
        "ow": lambda: g.pick(EN_WORDS),
        "obook": lambda: g.book(),
        "ocol": lambda: g.pick(COLOURS),
        "oaward": lambda: g.pick(["금빛 깃털상", "은하 예술상", "푸른 등대상", "한울 문화상", "북극성 학술상"]),
        "ocomp": lambda: g.company(),
        "osales": lambda: f"{g.r.randint(2, 980)}억 원",
        "oprodname": lambda: f"{g.english_name()}-{g.r.randint(1, 99)}",
        "olen": lambda: g.num(30, 2900, "킬로미터"),
        "omt": lambda: g.mountain(),
        "obridge": lambda: g.uniq(lambda: g.word(2) + "교"),
        "ofish": lambda: g.pick(FISH),
        "owt": lambda: g.num(2, 950, "킬로그램", comma=False),
        "oprice": lambda: f"{g.r.randint(3, 900)}만 원",
        "opatent": lambda: f"제{g.r.randint(1000, 99999)}호",
        "omat": lambda: g.pick(MATERIALS),
    })


def make_document(g, doc_idx, split):
    maker = DOC_TYPES[doc_idx % len(DOC_TYPES)]
    for _attempt in range(50):
        title, v, facts, distract = maker(g)
        n_facts = g.r.randint(4, len(facts))
        chosen = sorted(g.r.sample(range(len(facts)), n_facts))
        # Always keep the first fact (introduces the entity by name).
        if 0 not in chosen:
            chosen = [0] + chosen[:-1]
        pieces = []  # (sentence_text, spans, fact_index or None)
        for fi in chosen:
            tmpl = g.pick(facts[fi][0])
            text, spans = render(tmpl, v)
            pieces.append((text, spans, fi))
        n_dis = g.r.randint(2, 12) if g.r.random() < 0.75 else g.r.randint(12, 20)
        for _ in range(n_dis):
            tmpl = g.pick(distract)
            text, _ = render(tmpl, other_values(g))
            pos = g.r.randint(1, len(pieces))
            pieces.insert(pos, (text, {}, None))
        # Assemble, remembering the char offset of each sentence.
        ctx_parts, offsets = [], []
        pos = 0
        for i, (text, spans, fi) in enumerate(pieces):
            sep = "" if i == 0 else (" " if g.r.random() < 0.93 else "\n")
            pos += len(sep)
            offsets.append(pos)
            ctx_parts.append(sep + text)
            pos += len(text)
        context = "".join(ctx_parts)
        if not (MIN_CTX <= len(context) <= MAX_CTX):
            continue
        # Questions: facts whose answer key was rendered in this context.
        cands = []
        for (text, spans, fi), off in zip(pieces, offsets):
            if fi is None:
                continue
            key = facts[fi][2]
            if key in spans:
                cands.append((fi, key, off + spans[key][0]))
        seen_keys, uniq_cands = set(), []
        for c in cands:
            if c[1] not in seen_keys:
                seen_keys.add(c[1])
                uniq_cands.append(c)
        if len(uniq_cands) < 3:
            continue
        n_q = min(len(uniq_cands), g.r.randint(3, 5))
        qs = g.r.sample(uniq_cands, n_q)
        qs.sort(key=lambda c: c[2])
        qas = []
        for qi, (fi, key, start) in enumerate(qs):
            qtext, _ = render(g.pick(facts[fi][1]), v)
            ans = v[key]
            assert context[start:start + len(ans)] == ans, (context, ans, start)
            qas.append({
                "id": f"{split}-{doc_idx:03d}-{qi}",
                "question": qtext,
                "answers": [{"text": ans, "answer_start": start}],
            })
        return {"title": title, "paragraphs": [{"context": context, "qas": qas}]}
    raise RuntimeError("could not build a document within length bounds")


def build(split, n_docs, g):
    data = [make_document(g, i, split) for i in range(n_docs)]
    return {"version": "synthetic_ko_v1.0", "data": data}


def check(ds):
    titles = [d["title"] for d in ds["data"]]
    assert len(titles) == len(set(titles)), "titles must be unique"
    ids = set()
    for d in ds["data"]:
        for p in d["paragraphs"]:
            c = p["context"]
            assert MIN_CTX <= len(c) <= MAX_CTX
            for qa in p["qas"]:
                assert qa["id"] not in ids
                ids.add(qa["id"])
                for a in qa["answers"]:
                    s = a["answer_start"]
                    assert c[s:s + len(a["text"])] == a["text"]


def main():
    g = Gen(SEED)
    train = build("train", N_TRAIN_DOCS, g)
    test = build("test", N_TEST_DOCS, g)
    all_titles = [d["title"] for d in train["data"] + test["data"]]
    assert len(all_titles) == len(set(all_titles))
    os.makedirs(OUT_DIR, exist_ok=True)
    for name, ds in (("train", train), ("test", test)):
        check(ds)
        path = os.path.join(OUT_DIR, f"{name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(ds, f, ensure_ascii=False, indent=1)
            f.write("\n")
        nq = sum(len(p["qas"]) for d in ds["data"] for p in d["paragraphs"])
        lens = [len(p["context"]) for d in ds["data"] for p in d["paragraphs"]]
        print(f"{path}: {len(ds['data'])} documents, {nq} questions, "
              f"context chars {min(lens)}-{max(lens)} (mean {sum(lens) / len(lens):.0f}), "
              f"{os.path.getsize(path)} bytes")


if __name__ == "__main__":
    sys.exit(main())
