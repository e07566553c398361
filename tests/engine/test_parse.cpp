// engine/parse.h: every number read from text is checked whole and for range; bad text is a user error.
#include <gtest/gtest.h>

#include "engine/check.h"
#include "engine/parse.h"

using namespace monta::engine;

TEST(Parse, IntegersWholeAndInRange) {
  install_throwing_handler();
  EXPECT_EQ(parse_int64("42", "x"), 42);
  EXPECT_EQ(parse_int64("-7", "x"), -7);
  EXPECT_EQ(parse_int64("+7", "x"), 7);
  EXPECT_EQ(parse_int64("9223372036854775807", "x"), INT64_MAX);
  EXPECT_FALSE(try_parse_int64("9223372036854775808"));       // overflow
  EXPECT_FALSE(try_parse_int64("000000000000000000012345678901234567890"));
  EXPECT_FALSE(try_parse_int64("abc"));
  EXPECT_FALSE(try_parse_int64("12abc"));
  EXPECT_FALSE(try_parse_int64(" 12"));
  EXPECT_FALSE(try_parse_int64(""));
  EXPECT_FALSE(try_parse_int64("1.5"));
  EXPECT_EQ(parse_int("2147483647", "x"), 2147483647);
  EXPECT_FALSE(try_parse_int("2147483648"));
  try {
    parse_int("abc", "bench exchange --chunks");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_TRUE(e.user);
    EXPECT_NE(std::string(e.what()).find("--chunks must be an integer"), std::string::npos) << e.what();
  }
}

TEST(Parse, RealsAndLists) {
  install_throwing_handler();
  EXPECT_DOUBLE_EQ(parse_double("1e-3", "x"), 1e-3);
  EXPECT_DOUBLE_EQ(parse_double("-2.5", "x"), -2.5);
  EXPECT_FALSE(try_parse_double("1e999"));
  EXPECT_FALSE(try_parse_double("1.0x"));
  EXPECT_FALSE(try_parse_double(""));
  EXPECT_EQ(parse_int_list("1,2,4", "x"), (std::vector<int>{1, 2, 4}));
  EXPECT_THROW(parse_int_list("1,,4", "x"), Error);
  EXPECT_THROW(parse_int_list("1,x", "x"), Error);
}

TEST(Parse, Unsigned64) {
  EXPECT_EQ(try_parse_uint64("18446744073709551615"), UINT64_MAX);
  EXPECT_FALSE(try_parse_uint64("18446744073709551616"));  // overflow
  EXPECT_FALSE(try_parse_uint64("-1"));
  EXPECT_FALSE(try_parse_uint64("+1"));
  EXPECT_FALSE(try_parse_uint64("12x"));
  EXPECT_FALSE(try_parse_uint64(""));
}
