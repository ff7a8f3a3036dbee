/* An intrusive doubly linked list (the sessions of the server, a layer's queue of
 * submissions, the attaches waiting for a layer being created). */
#ifndef LLEPD_LIST_H
#define LLEPD_LIST_H

#include <stdbool.h>
#include <stddef.h>

typedef struct llepd_list {
    struct llepd_list *prev, *next;
} llepd_list;

static inline void llepd_list_init(llepd_list *l) {
    l->prev = l->next = l;
}
static inline bool llepd_list_empty(const llepd_list *l) {
    return l->next == l;
}
static inline void llepd_list_append(llepd_list *head, llepd_list *n) {
    n->prev = head->prev;
    n->next = head;
    head->prev->next = n;
    head->prev = n;
}
static inline void llepd_list_remove(llepd_list *n) {
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}
#define llepd_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

#endif
