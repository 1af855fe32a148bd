#include <stdio.h>
int main(void) { puts("quiver: under construction"); return 0; }
