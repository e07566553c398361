// monta: entry point; dispatches to the subcommands.
#include <cstdio>
#include <cstring>
int main(int argc, char** argv) {
  (void)argc;
  (void)argv;
  std::puts("monta: placeholder");
  return 0;
}
